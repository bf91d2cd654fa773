//! frp's legacy INI format (`frps.ini`, `frpc.ini`: a `[common]` section, then one
//! section per proxy or visitor), turned into the tree of the TOML format so that one
//! model reads both.
//!
//! Keys are `snake_case` where TOML has `camelCase` and some live elsewhere: the
//! [`moved`] table maps those (`token` → `auth.token`, `http_pwd` → `httpPassword`,
//! `header_X` → `requestHeaders.set.X`); every other key is written in camelCase
//! (`local_ip` → `localIp`, which matches `localIP` as keys match ignoring case) and
//! meets the same checks as in a TOML file. Values are strings that the model reads as
//! numbers or booleans where it wants them; comma-separated lists become lists.

use super::tree::{Entry, Item, Value};
use super::Side;

/// `snake_case` → `camelCase`.
fn camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut up = false;
    for c in key.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Where an INI key of `[common]` lives in the TOML model, when not at its camelCase
/// name at the top level.
fn moved_common(key: &str, side: Side) -> Option<String> {
    let prefixed = |prefix: &str, to: &str| {
        key.strip_prefix(prefix)
            .map(|r| format!("{to}{}", camel(r)))
    };
    let to = match key {
        "token" => "auth.token",
        "authentication_method" => "auth.method",
        "authenticate_heartbeats" | "authenticate_new_work_conns" => "auth.additionalScopes",
        "log_file" => "log.to",
        "log_level" => "log.level",
        "log_max_days" => "log.maxDays",
        "disable_log_color" => "log.disablePrintColor",
        "dashboard_addr" | "admin_addr" => "webServer.addr",
        "dashboard_port" | "admin_port" => "webServer.port",
        "dashboard_user" | "admin_user" => "webServer.user",
        "dashboard_pwd" | "admin_pwd" => "webServer.password",
        "assets_dir" => "webServer.assetsDir",
        "protocol" => "transport.protocol",
        "tls_enable" => "transport.tls.enable",
        "tls_only" => "transport.tls.force",
        "tls_cert_file" => "transport.tls.certFile",
        "tls_key_file" => "transport.tls.keyFile",
        "tls_trusted_ca_file" => "transport.tls.trustedCaFile",
        "tls_server_name" => "transport.tls.serverName",
        "disable_custom_tls_first_byte" => "transport.tls.disableCustomTLSFirstByte",
        "heartbeat_interval" => "transport.heartbeatInterval",
        "heartbeat_timeout" => "transport.heartbeatTimeout",
        "pool_count" => "transport.poolCount",
        "max_pool_count" => "transport.maxPoolCount",
        "tcp_mux" => "transport.tcpMux",
        "tcp_mux_keepalive_interval" => "transport.tcpMuxKeepaliveInterval",
        "tcp_keepalive" => "transport.tcpKeepalive",
        "dial_server_timeout" => "transport.dialServerTimeout",
        "dial_server_keepalive" => "transport.dialServerKeepalive",
        "connect_server_local_ip" => "transport.connectServerLocalIP",
        "http_proxy" => "transport.proxyURL",
        "bind_udp_port" if side == Side::Server => "bindUdpPort",
        _ => {
            return prefixed("oidc_", "auth.oidc.")
                .or_else(|| prefixed("quic_", "transport.quic."))
                .or_else(|| prefixed("dashboard_tls_", "webServer.tls."))
        }
    };
    Some(to.to_string())
}

/// Where a key of a proxy or visitor section lives, when not at its camelCase name.
fn moved_proxy(key: &str) -> Option<String> {
    let prefixed = |prefix: &str, to: &str| {
        key.strip_prefix(prefix)
            .map(|r| format!("{to}{}", camel(r)))
    };
    let to = match key {
        "http_pwd" => "httpPassword",
        "sk" => "secretKey",
        "use_encryption" => "transport.useEncryption",
        "use_compression" => "transport.useCompression",
        "bandwidth_limit" => "transport.bandwidthLimit",
        "bandwidth_limit_mode" => "transport.bandwidthLimitMode",
        "proxy_protocol_version" => "transport.proxyProtocolVersion",
        "plugin" => "plugin.type",
        "group" => "loadBalancer.group",
        "group_key" => "loadBalancer.groupKey",
        _ => {
            // Header names keep their spelling.
            if let Some(h) = key.strip_prefix("header_") {
                return Some(format!("requestHeaders.set.{h}"));
            }
            return prefixed("plugin_", "plugin.")
                .or_else(|| prefixed("health_check_", "healthCheck."))
                .or_else(|| prefixed("meta_", "metadatas."));
        }
    };
    Some(to.to_string())
}

/// Keys whose INI value is a comma-separated list.
const LISTS: &[&str] = &["custom_domains", "locations", "allow_users", "start"];

/// One `key = value` line.
struct Line<'a> {
    key: &'a str,
    value: &'a str,
    line: usize,
}

/// One `[section]` and its lines.
struct Section<'a> {
    name: &'a str,
    line: usize,
    lines: Vec<Line<'a>>,
}

/// Whether `text` is frp's INI format: it has a `[common]` section.
pub(crate) fn is_ini(text: &str) -> bool {
    text.lines().any(|l| l.trim() == "[common]")
}

/// Reads an INI document into the TOML model's tree. The error is a message and a line.
pub(crate) fn to_tree(text: &str, side: Side) -> Result<Item, (String, usize)> {
    let mut sections: Vec<Section<'_>> = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some(name) = l.strip_prefix('[') {
            let Some(name) = name.strip_suffix(']') else {
                return Err((format!("`{l}`: a section header ends with `]`"), line));
            };
            let name = name.trim();
            if sections.iter().any(|s| s.name == name) {
                return Err((format!("section [{name}] is given twice"), line));
            }
            sections.push(Section {
                name,
                line,
                lines: Vec::new(),
            });
            continue;
        }
        let Some(section) = sections.last_mut() else {
            return Err((format!("`{l}` comes before any [section]"), line));
        };
        let (key, value) = match l.split_once('=') {
            Some(kv) => kv,
            None => match l.split_once(':') {
                Some(kv) => kv,
                // go-ini's boolean keys: a key alone is `true`.
                None => (l, "true"),
            },
        };
        let key = key.trim();
        let mut value = value.trim();
        for q in ['"', '\''] {
            if value.len() >= 2 && value.starts_with(q) && value.ends_with(q) {
                value = &value[1..value.len() - 1];
            }
        }
        if section.lines.iter().any(|x| x.key == key) {
            return Err((format!("{key} is given twice in [{}]", section.name), line));
        }
        section.lines.push(Line { key, value, line });
    }

    let mut root = Item::new(Value::Table(Vec::new()), None);
    let mut proxies = Vec::new();
    let mut visitors = Vec::new();
    let mut ranges = Vec::new();
    for s in &sections {
        if s.name == "common" {
            for l in &s.lines {
                let item = value(l);
                match l.key {
                    "allow_ports" if side == Side::Server => {
                        root.set(&["allowPorts"], ports(l)?);
                    }
                    _ => {
                        let to = moved_common(l.key, side).unwrap_or_else(|| camel(l.key));
                        root.set(&to.split('.').collect::<Vec<_>>(), item);
                    }
                }
            }
            continue;
        }
        // Another section: a proxy or a visitor (client), an httpPlugin (server).
        let mut entry = Item::new(Value::Table(Vec::new()), Some(s.line));
        entry.set(
            &["name"],
            Item::new(Value::Str(s.name.to_string()), Some(s.line)),
        );
        if let Some(name) = s.name.strip_prefix("range:") {
            // frp's port ranges: kept as a top-level `range` list, which the model does
            // not read, so that it is refused by name.
            entry.set(
                &["name"],
                Item::new(Value::Str(name.to_string()), Some(s.line)),
            );
            ranges.push(entry);
            continue;
        }
        let mut visitor = false;
        for l in &s.lines {
            if l.key == "role" {
                visitor = l.value == "visitor";
                if l.value != "visitor" && l.value != "server" {
                    entry.set(&["role"], value(l));
                }
                continue;
            }
            let to = moved_proxy(l.key).unwrap_or_else(|| camel(l.key));
            let parts: Vec<&str> = match to.strip_prefix("requestHeaders.set.") {
                Some(h) => vec!["requestHeaders", "set", h],
                None => to.split('.').collect(),
            };
            entry.set(&parts, value(l));
        }
        match (side, visitor) {
            (Side::Server, _) => {
                let plugins = root.get_mut("httpPlugins").map(|e| &mut e.item);
                match plugins {
                    Some(Item {
                        value: Value::Array(items),
                        ..
                    }) => items.push(entry),
                    _ => root.set(
                        &["httpPlugins"],
                        Item::new(Value::Array(vec![entry]), Some(s.line)),
                    ),
                }
            }
            (Side::Client, false) => proxies.push(entry),
            (Side::Client, true) => visitors.push(entry),
        }
    }
    if let Value::Table(entries) = &mut root.value {
        for (key, items) in [
            ("proxies", proxies),
            ("visitors", visitors),
            ("range", ranges),
        ] {
            if !items.is_empty() {
                let line = items[0].line;
                entries.push(Entry {
                    key: key.to_string(),
                    line,
                    item: Item::new(Value::Array(items), line),
                });
            }
        }
    }
    Ok(root)
}

/// A value: a string, or a list of strings for the list keys.
fn value(l: &Line<'_>) -> Item {
    let line = Some(l.line);
    if LISTS.contains(&l.key) {
        let items = l
            .value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| Item::new(Value::Str(s.to_string()), line))
            .collect();
        Item::new(Value::Array(items), line)
    } else {
        Item::new(Value::Str(l.value.to_string()), line)
    }
}

/// `allow_ports = 2000-3000,3001` → `allowPorts = [{ start, end }, { single }]`.
fn ports(l: &Line<'_>) -> Result<Item, (String, usize)> {
    let line = Some(l.line);
    let num = |s: &str| -> Result<Item, (String, usize)> {
        s.trim()
            .parse::<i64>()
            .map(|n| Item::new(Value::Int(n), line))
            .map_err(|_| (format!("allow_ports: {s:?} is not a port"), l.line))
    };
    let mut items = Vec::new();
    for part in l.value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let entries = match part.split_once('-') {
            Some((a, b)) => vec![("start", num(a)?), ("end", num(b)?)],
            None => vec![("single", num(part)?)],
        };
        let entries = entries
            .into_iter()
            .map(|(k, item)| Entry {
                key: k.to_string(),
                line,
                item,
            })
            .collect();
        items.push(Item::new(Value::Table(entries), line));
    }
    Ok(Item::new(Value::Array(items), line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_case() {
        assert_eq!(camel("vhost_http_port"), "vhostHttpPort");
        assert_eq!(camel("server_addr"), "serverAddr");
        assert_eq!(camel("token"), "token");
    }

    #[test]
    fn client_sections_become_proxies_and_visitors() {
        let t = to_tree(
            "[common]\nserver_addr = 1.2.3.4\ntoken = x\nlog_level = info\n\
             [ssh]\ntype = tcp\nlocal_port = 22\nuse_encryption = true\nheader_X-A = b\n\
             [v]\nrole = visitor\ntype = xtcp\nsk = s\n",
            Side::Client,
        )
        .unwrap();
        let Value::Table(root) = &t.value else {
            panic!()
        };
        let keys: Vec<&str> = root.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["serverAddr", "auth", "log", "proxies", "visitors"]);
        let shown = format!("{t:?}");
        for want in ["useEncryption", "X-A", "secretKey", "\"ssh\""] {
            assert!(shown.contains(want), "{want} in {shown}");
        }
        assert!(!shown.contains("role"), "{shown}");
    }

    #[test]
    fn bad_lines_are_errors() {
        assert_eq!(to_tree("x = 1\n[common]", Side::Client).unwrap_err().1, 1);
        assert_eq!(
            to_tree("[common]\n[common]", Side::Client).unwrap_err().1,
            2
        );
        assert_eq!(to_tree("[common]\n[a\n", Side::Client).unwrap_err().1, 2);
        assert_eq!(
            to_tree("[common]\nallow_ports = 1-x", Side::Server)
                .unwrap_err()
                .1,
            2
        );
    }
}
