//! Config files: the model shared by the server's and the peer's config parsers
//! (`rendezvous::config`, `peer::config`): reading a file (frp's TOML format, the same
//! keys in YAML or JSON, or its legacy INI format), rendering frp's `{{ .Envs.NAME }}` templates, and sorting every
//! key the crate's serde model did not read.
//!
//! The serde structs of each crate are the one list of the keys punchline reads. Keys
//! are matched to their fields as frp matches them, ignoring case. A key the model did
//! not read (collected with `serde_ignored`, as Cargo does) is looked up in the crate's
//! table of frp's other keys ([`FrpKey`]): one that only tunes logging or frp's
//! internals is accepted, and all of them are named in one warning; one whose meaning
//! punchline cannot honour is refused, and all of them are named in one error,
//! together with any key nobody knows (a typo, with the closest known key as a
//! suggestion, found with `strsim`).

mod ini;
mod template;
mod tree;

use std::path::PathBuf;

/// Why a config file was refused. Every variant but `Read` names the file as it was
/// given (`origin`) and the key's path (`proxies[2].type`, `auth.token`); the line when
/// it is known (`frps.toml:12: ...`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    // The OS error is in the message, not a `source`: `{:#}` would print it twice.
    #[error("{}: cannot read: {err}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("{}: {message}", at(origin, *line))]
    Syntax {
        /// The file.
        origin: String,
        /// The line of the error, when known.
        line: Option<usize>,
        /// The TOML parser's message.
        message: String,
    },
    /// A key that neither punchline nor frp has: usually a typo.
    #[error("{}: {key}: unknown key; {hint}", at(origin, *line))]
    UnknownKey {
        /// The file.
        origin: String,
        /// The key's line.
        line: Option<usize>,
        /// The key's path.
        key: String,
        /// The closest known key, or the keys known there.
        hint: String,
    },
    /// A key or value of frp's that punchline does not implement.
    #[error("{}: {key}: {message}", at(origin, *line))]
    Unsupported {
        /// The file.
        origin: String,
        /// The key's line, when known.
        line: Option<usize>,
        /// The key's path.
        key: String,
        /// What is not supported, and what to do instead.
        message: String,
    },
    /// Several of the above, each with its key and line, so that one run names every
    /// key to fix.
    #[error("{origin}: {} problems:{}", errors.len(), list(errors))]
    Many {
        /// The file.
        origin: String,
        /// The problems, in file order.
        errors: Vec<ConfigError>,
    },
    /// A value that is missing, of the wrong type, out of range or in conflict with
    /// another.
    #[error("{}: {key}: {message}", at(origin, *line))]
    Invalid {
        /// The file.
        origin: String,
        /// The value's line, when known.
        line: Option<usize>,
        /// The key's path.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// The path of the key the error is about (`proxies[2].type`), if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. }
            | ConfigError::Unsupported { key, .. }
            | ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Many { errors, .. } => errors.first().and_then(ConfigError::key),
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => None,
        }
    }

    /// The line of the key, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::UnknownKey { line, .. }
            | ConfigError::Unsupported { line, .. }
            | ConfigError::Invalid { line, .. }
            | ConfigError::Syntax { line, .. } => *line,
            ConfigError::Many { errors, .. } => errors.first().and_then(ConfigError::line),
            ConfigError::Read { .. } => None,
        }
    }

    /// The errors this one stands for: itself, or the list of a `Many`.
    pub fn all(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Many { errors, .. } => errors.iter().collect(),
            e => vec![e],
        }
    }

    /// The errors this one stands for, owned.
    pub fn into_list(self) -> Vec<ConfigError> {
        match self {
            ConfigError::Many { errors, .. } => errors,
            e => vec![e],
        }
    }

    /// One error for a list of them (`None` for none).
    pub fn from_list(origin: &str, mut errors: Vec<ConfigError>) -> Option<ConfigError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => {
                errors.sort_by_key(|e| e.line().unwrap_or(usize::MAX));
                Some(ConfigError::Many {
                    origin: origin.to_string(),
                    errors,
                })
            }
        }
    }
}

fn list(errors: &[ConfigError]) -> String {
    errors.iter().map(|e| format!("\n  {e}")).collect()
}

/// `origin` or `origin:line`.
pub fn at(origin: &str, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("{origin}:{line}"),
        None => origin.to_string(),
    }
}

/// An IP address, IPv6 with or without brackets (frp writes `bindAddr = "::"`).
pub fn parse_ip(s: &str) -> Option<std::net::IpAddr> {
    let inner = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    inner.parse().ok()
}

/// A DNS name (or a container's name): dot-separated labels of letters, digits, `-`
/// and `_`, none empty, none starting or ending with `-`.
pub fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Which program's file: the server's (`frps`) or the peer's (`frpc`). The INI format
/// differs between them (`admin_*` and `dashboard_*`, proxy sections).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// `rendezvous -c` (frps).
    Server,
    /// `peer -c` (frpc).
    Client,
}

/// The format a file was read in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// frp's TOML format (v0.52 and later), and punchline's own.
    Toml,
    /// frp's legacy INI format (`[common]`, one section per proxy).
    Ini,
    /// frp's YAML format (a file named `.yaml` or `.yml`): the TOML format's keys.
    Yaml,
    /// frp's JSON format (a file named `.json`): the TOML format's keys.
    Json,
}

/// What punchline does with a key of frp's that its model does not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Accepted and ignored: it tunes logging or frp's internals, and the file means
    /// the same without it. Named in the one warning of the file.
    NoEffect,
    /// Refused: without it the file would mean something punchline does not do.
    Refused,
}

/// One of frp's keys (or a table of them, `log` standing for `log.*`) that punchline's
/// model does not read, with what is done with it and why.
#[derive(Clone, Copy, Debug)]
pub struct FrpKey {
    /// The key's path, `[]` for any index: `log`, `proxies[].plugin`.
    pub key: &'static str,
    /// Ignored or refused.
    pub effect: Effect,
    /// Why, or what to do instead.
    pub why: &'static str,
}

/// A file read into the model `T`, before the crate's own `validate()`.
pub struct Parsed<T> {
    /// The model.
    pub model: T,
    /// Keys accepted with no effect, each with its reason, in file order.
    pub no_effect: Vec<(String, &'static str)>,
    /// The format the file was in.
    pub format: Format,
    /// Every key of the model that this file reached (`proxies[].localPort`): the
    /// fields of each table the model read, tables themselves left out.
    pub fields: Vec<String>,
    /// Unknown and refused keys, reported by [`Parsed::finish`] with the model's own
    /// errors.
    errors: Vec<ConfigError>,
    origin: String,
    root: tree::Item,
}

impl<T> Parsed<T> {
    /// The line of a key path such as `proxies[2].localPort`, or of the deepest part
    /// of it present in the file.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut item = &self.root;
        let mut found = None;
        for segment in segments(path) {
            match segment {
                Segment::Key(name) => {
                    let tree::Value::Table(entries) = &item.value else {
                        break;
                    };
                    let Some(e) = entries.iter().find(|e| e.key.eq_ignore_ascii_case(name)) else {
                        break;
                    };
                    found = e.line.or(found);
                    item = &e.item;
                }
                Segment::Index(i) => {
                    let tree::Value::Array(items) = &item.value else {
                        break;
                    };
                    let Some(next) = items.get(i) else { break };
                    found = next.line.or(found);
                    item = next;
                }
            }
        }
        found
    }

    /// Adds the line of its key to an error from `validate()`, which works without
    /// lines (every error of a `Many`).
    pub fn add_line(&self, e: ConfigError) -> ConfigError {
        match e {
            ConfigError::Invalid {
                origin,
                line: None,
                key,
                message,
            } => ConfigError::Invalid {
                origin,
                line: self.line_of(&key),
                key,
                message,
            },
            ConfigError::Unsupported {
                origin,
                line: None,
                key,
                message,
            } => ConfigError::Unsupported {
                origin,
                line: self.line_of(&key),
                key,
                message,
            },
            ConfigError::Many { origin, errors } => ConfigError::Many {
                origin,
                errors: errors.into_iter().map(|e| self.add_line(e)).collect(),
            },
            e => e,
        }
    }

    /// The model, and the rest for [`Parsed::add_line`].
    pub fn take(self) -> (T, Parsed<()>) {
        let Parsed {
            model,
            no_effect,
            format,
            fields,
            errors,
            origin,
            root,
        } = self;
        (
            model,
            Parsed {
                model: (),
                no_effect,
                format,
                fields,
                errors,
                origin,
                root,
            },
        )
    }

    /// The result of the crate's `validate()` together with the unknown and refused
    /// keys: all of them in one error (lines added), or the config and the keys
    /// accepted with no effect.
    #[allow(clippy::type_complexity)]
    pub fn finish<C>(
        mut self,
        validated: Result<C, ConfigError>,
    ) -> Result<(C, Vec<(String, &'static str)>), ConfigError> {
        let mut errors = std::mem::take(&mut self.errors);
        let e = match validated {
            Ok(c) if errors.is_empty() => return Ok((c, self.no_effect)),
            Ok(_) => None,
            Err(e) => Some(e),
        };
        if let Some(e) = e {
            for e in self.add_line(e).into_list() {
                if !errors
                    .iter()
                    .any(|x| x.key().is_some() && x.key() == e.key())
                {
                    errors.push(e);
                }
            }
        }
        let origin = self.origin;
        Err(
            ConfigError::from_list(&origin, errors).unwrap_or(ConfigError::Syntax {
                origin: origin.clone(),
                line: None,
                message: "refused".into(),
            }),
        )
    }

    /// The one warning about keys accepted with no effect, if there are any.
    pub fn warning(&self) -> Option<String> {
        no_effect_warning(&self.origin, &self.no_effect)
    }
}

/// Reasons shared by both programs' tables of frp keys.
pub const NO_LOG: &str = "logs go to stderr; set the level with -v or RUST_LOG";
/// Why frp's `transport.tls.*` keys change nothing.
pub const NO_TLS: &str = "connections are always encrypted and authenticated by the token, \
                          with Noise rather than TLS: there are no certificates";

/// One program's file model (the serde struct of every key it reads): its side, its
/// table of frp's other keys, and how it becomes the program's config. [`load`] and
/// [`parse`] do the rest the same way for both programs.
pub trait Model: serde::de::DeserializeOwned {
    /// What the file gives the program.
    type Config;
    /// Server or client.
    const SIDE: Side;
    /// frp's keys the model does not read: accepted with no effect, or refused.
    const KEYS: &'static [FrpKey];
    /// Checks the values and fills in defaults; errors name `origin`.
    fn validate(self, origin: &str) -> Result<Self::Config, ConfigError>;
    /// Where the config keeps the keys accepted with no effect (named in a warning).
    fn no_effect(cfg: &mut Self::Config) -> &mut Vec<(String, &'static str)>;
}

/// Parses a config of model `M` from `text`; `origin` names it in errors (a file name).
pub fn parse<M: Model>(text: &str, origin: &str) -> Result<M::Config, ConfigError> {
    let (file, parsed) = read::<M>(text, origin, M::SIDE, M::KEYS)?.take();
    let (mut cfg, no_effect) = parsed.finish(file.validate(origin))?;
    *M::no_effect(&mut cfg) = no_effect;
    Ok(cfg)
}

/// Reads and parses a config file of model `M`, and logs one warning naming every key
/// that has no effect.
pub fn load<M: Model>(path: &std::path::Path) -> Result<M::Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
        path: path.to_path_buf(),
        err,
    })?;
    let origin = path.display().to_string();
    let mut cfg = parse::<M>(&text, &origin)?;
    if let Some(w) = no_effect_warning(&origin, M::no_effect(&mut cfg)) {
        tracing::warn!("{w}");
    }
    Ok(cfg)
}

/// What the README's table of frp keys must say for model `M`: every key a file with
/// every table (`full`) reaches, accepted, and `M::KEYS` with their effects, sorted.
/// The crates' tests compare it with [`readme_rows`].
pub fn key_statuses<M: Model>(
    full: &str,
    origin: &str,
) -> Result<Vec<(String, String)>, ConfigError> {
    let parsed = read::<M>(full, origin, M::SIDE, M::KEYS)?;
    let mut want: Vec<(String, String)> = parsed
        .fields
        .iter()
        .map(|k| (k.clone(), "accepted".to_string()))
        .collect();
    for k in M::KEYS {
        let status = match k.effect {
            Effect::NoEffect => "no effect",
            Effect::Refused => "refused",
        };
        want.push((k.key.to_string(), status.to_string()));
    }
    want.sort();
    Ok(want)
}

/// Prints `MASKED` in place of a secret (in `Debug` output).
pub struct Masked;

impl std::fmt::Debug for Masked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MASKED")
    }
}

/// Builds the errors of one file's validation (its `origin` in each).
#[derive(Debug, Clone, Copy)]
pub struct Errors<'a> {
    /// The file's name, as given.
    pub origin: &'a str,
}

impl Errors<'_> {
    /// A value punchline cannot use (a typo, a wrong type, out of range).
    pub fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.to_string(),
            line: None,
            key: key.into(),
            message: message.into(),
        }
    }

    /// A valid frp value whose meaning punchline cannot honour.
    pub fn unsupported(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Unsupported {
            origin: self.origin.to_string(),
            line: None,
            key: key.into(),
            message: message.into(),
        }
    }

    /// A port; 0 only where `zero_ok`.
    pub fn port(&self, key: &str, value: i64, zero_ok: bool) -> Result<u16, ConfigError> {
        match u16::try_from(value) {
            Ok(0) if !zero_ok => Err(self.invalid(key, "0 is not allowed here (1-65535)")),
            Ok(p) => Ok(p),
            Err(_) => Err(self.invalid(key, format!("{value} is not a port (0-65535)"))),
        }
    }

    /// A type: one of `ok`, else refused (one of frp's other types `frp`) or invalid.
    pub fn kind(
        &self,
        key: &str,
        kind: &str,
        name: &str,
        ok: &[&str],
        frp: &[&str],
    ) -> Result<(), ConfigError> {
        if ok.contains(&kind) {
            return Ok(());
        }
        let supported = ok.join(", ");
        let verb = if ok.len() == 1 { "is" } else { "are" };
        if frp.contains(&kind) {
            Err(self.unsupported(
                key,
                format!("{kind:?} ({name:?}) is not supported by punchline ({supported} {verb})"),
            ))
        } else {
            Err(self.invalid(
                key,
                format!("{kind:?} ({name:?}) is unknown (punchline supports {supported})"),
            ))
        }
    }

    /// A required value.
    pub fn required<T>(&self, value: Option<T>, key: &str, what: &str) -> Result<T, ConfigError> {
        value.ok_or_else(|| self.invalid(key, format!("missing: {what}")))
    }

    /// A secret: present and not empty.
    pub fn secret(&self, value: Option<String>, key: &str) -> Result<String, ConfigError> {
        match value {
            None => Err(self.invalid(key, "missing: the shared secret")),
            Some(s) if s.is_empty() => Err(self.invalid(key, "is empty")),
            Some(s) => Ok(s),
        }
    }

    /// A proxy, visitor or service name: not empty, no spaces or control characters,
    /// short enough for the server.
    pub fn name(&self, key: &str, name: &str) -> Result<(), ConfigError> {
        if name.is_empty() {
            return Err(self.invalid(key, "is empty"));
        }
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.invalid(key, format!("{name:?} has spaces or control characters")));
        }
        if name.len() > crate::defaults::MAX_NAME_LEN {
            return Err(self.invalid(
                key,
                format!("is longer than {} bytes", crate::defaults::MAX_NAME_LEN),
            ));
        }
        Ok(())
    }
}

/// The rows of the README's table of frp keys for one program (`frps` or `frpc`):
/// each key and its status (`accepted`, `no effect`, `refused`). The crates' tests
/// check the table against the model and [`FrpKey`] tables with it.
pub fn readme_rows(readme: &str, program: &str) -> Vec<(String, String)> {
    readme
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            // | `key` | frps | accepted | why |
            if cells.len() < 5 || cells[2] != program {
                return None;
            }
            let key = cells[1].strip_prefix('`')?.strip_suffix('`')?;
            Some((key.to_string(), cells[3].to_string()))
        })
        .collect()
}

/// `frpc.toml: accepted with no effect in punchline: log.level, log.to (why); ...`.
pub fn no_effect_warning(origin: &str, keys: &[(String, &'static str)]) -> Option<String> {
    if keys.is_empty() {
        return None;
    }
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for (key, why) in keys {
        match groups.iter_mut().find(|(w, _)| w == why) {
            Some((_, ks)) => ks.push(key),
            None => groups.push((why, vec![key])),
        }
    }
    let parts: Vec<String> = groups
        .iter()
        .map(|(why, ks)| format!("{} ({why})", ks.join(", ")))
        .collect();
    Some(format!(
        "{origin}: these keys have no effect in punchline and are ignored: {}",
        parts.join("; ")
    ))
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// `proxies[2].transport.useCompression` → Key, Index, Key, Key.
fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        out.push(Segment::Key(name));
        while let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else { break };
            if let Ok(i) = r[..end].parse() {
                out.push(Segment::Index(i));
            }
            rest = &r[end + 1..];
        }
    }
    out
}

/// Reads `text` into the model `T`: renders templates, parses (YAML or JSON when
/// `origin` ends in `.yaml`/`.yml` or `.json`, as frp decides; else INI when the file
/// has a `[common]` section, else TOML), deserializes, and sorts the keys the model did not
/// read by `keys`. Errors carry `origin` (the file's name), the key and its line; all
/// unknown and refused keys are in one error.
pub fn read<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &str,
    side: Side,
    keys: &[FrpKey],
) -> Result<Parsed<T>, ConfigError> {
    let syntax = |message: String, line: Option<usize>| ConfigError::Syntax {
        origin: origin.to_string(),
        line,
        message,
    };
    let text = template::render(text, |name| std::env::var(name).ok())
        .map_err(|(m, line)| syntax(m, Some(line)))?;
    let ext = std::path::Path::new(origin)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let (root, format) = match ext.as_deref() {
        Some("yaml" | "yml") => (
            tree::from_yaml(&text).map_err(|(m, line)| syntax(m, line))?,
            Format::Yaml,
        ),
        Some("json") => (
            tree::from_json(&text).map_err(|(m, line)| syntax(m, line))?,
            Format::Json,
        ),
        _ if ini::is_ini(&text) => {
            let root = ini::to_tree(&text, side).map_err(|(m, line)| syntax(m, Some(line)))?;
            (root, Format::Ini)
        }
        _ => (
            tree::from_toml(&text).map_err(|(m, line)| syntax(m, line))?,
            Format::Toml,
        ),
    };
    let ctx = tree::Ctx {
        lenient: format == Format::Ini,
        ..tree::Ctx::default()
    };
    let de = tree::De {
        item: &root,
        path: String::new(),
        ctx: &ctx,
    };
    let mut ignored = Vec::new();
    let model: T = serde_ignored::deserialize(de, |p| ignored.push(path_of(&p))).map_err(
        |e: tree::DeError| ConfigError::Invalid {
            origin: origin.to_string(),
            line: e.line,
            key: e.path.unwrap_or_default(),
            message: e.message,
        },
    )?;
    let fields = ctx.fields.into_inner();
    let mut keys_read = Vec::new();
    for (path, names) in &fields {
        for name in *names {
            let key = tree::join(path, name);
            if !fields.contains_key(&key) && !fields.contains_key(&format!("{key}[]")) {
                keys_read.push(key);
            }
        }
    }
    let mut parsed = Parsed {
        model,
        no_effect: Vec::new(),
        format,
        fields: keys_read,
        errors: Vec::new(),
        origin: origin.to_string(),
        root,
    };
    let mut errors = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    for path in ignored {
        let mut leaves = Vec::new();
        if let Some(item) = parsed.find(&path) {
            leaves_of(item, &path, &mut leaves);
        } else {
            leaves.push(path.clone());
        }
        for leaf in leaves {
            match classify(&leaf, keys) {
                Some(k) if k.effect == Effect::NoEffect => parsed.no_effect.push((leaf, k.why)),
                Some(k) => errors.push(ConfigError::Unsupported {
                    origin: origin.to_string(),
                    line: parsed.line_of(&leaf),
                    message: format!("not supported by punchline ({})", k.why),
                    key: leaf,
                }),
                None => {
                    let key = first_unknown(&path, &leaf, keys);
                    if unknown.contains(&key) {
                        continue;
                    }
                    unknown.push(key.clone());
                    errors.push(ConfigError::UnknownKey {
                        origin: origin.to_string(),
                        line: parsed.line_of(&key),
                        hint: hint(&key, &fields, keys),
                        key,
                    });
                }
            }
        }
    }
    parsed.errors = errors;
    Ok(parsed)
}

impl<T> Parsed<T> {
    /// The value at `path` (keys matched ignoring case).
    fn find(&self, path: &str) -> Option<&tree::Item> {
        let mut item = &self.root;
        for segment in segments(path) {
            item = match (segment, &item.value) {
                (Segment::Key(name), tree::Value::Table(entries)) => {
                    &entries
                        .iter()
                        .find(|e| e.key.eq_ignore_ascii_case(name))?
                        .item
                }
                (Segment::Index(i), tree::Value::Array(items)) => items.get(i)?,
                _ => return None,
            };
        }
        Some(item)
    }
}

/// `serde_ignored`'s path in punchline's notation (`proxies[1].plugin`).
fn path_of(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", path_of(parent)),
        Path::Map { parent, key } => tree::join(&path_of(parent), key),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => path_of(parent),
    }
}

/// The paths of the values under `item` (itself if it is not a table or list of
/// tables, or is empty).
fn leaves_of(item: &tree::Item, path: &str, out: &mut Vec<String>) {
    match &item.value {
        tree::Value::Table(entries) if !entries.is_empty() => {
            for e in entries {
                leaves_of(&e.item, &tree::join(path, &e.key), out);
            }
        }
        tree::Value::Array(items)
            if !items.is_empty()
                && items
                    .iter()
                    .all(|i| matches!(i.value, tree::Value::Table(_))) =>
        {
            for (i, it) in items.iter().enumerate() {
                leaves_of(it, &format!("{path}[{i}]"), out);
            }
        }
        _ => out.push(path.to_string()),
    }
}

/// Whether `pattern` is `entry` or under it (`log.level` under `log`), ignoring case.
fn under(pattern: &str, entry: &str) -> bool {
    let (p, e) = (pattern.to_ascii_lowercase(), entry.to_ascii_lowercase());
    p == e
        || p.strip_prefix(&e)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// The entry of `keys` that `path` falls under.
fn classify<'k>(path: &str, keys: &'k [FrpKey]) -> Option<&'k FrpKey> {
    let pattern = tree::pattern(path);
    keys.iter().find(|k| under(&pattern, k.key))
}

/// The part of an unknown `leaf` (under the ignored `path`) to report: the first part
/// that no entry of `keys` lies under.
fn first_unknown(path: &str, leaf: &str, keys: &[FrpKey]) -> String {
    let mut key = path.to_string();
    let rest = leaf.strip_prefix(path).unwrap_or("");
    let mut parts = rest.split('.').filter(|s| !s.is_empty());
    loop {
        let pattern = tree::pattern(&key);
        if !keys.iter().any(|k| under(k.key, &pattern)) {
            return key;
        }
        match parts.next() {
            Some(p) => key = tree::join(&key, p),
            None => return key,
        }
    }
}

/// "did you mean `bindPort`?" when a known key is close (`_`/`-` aside, or two edits
/// away), else the keys read there.
fn hint(
    key: &str,
    fields: &std::collections::BTreeMap<String, &'static [&'static str]>,
    keys: &[FrpKey],
) -> String {
    let (parent, name) = match key.rfind('.') {
        Some(i) => (&key[..i], &key[i + 1..]),
        None => ("", key),
    };
    let parent = tree::pattern(parent);
    let known: Vec<&str> = fields.get(&parent).map(|f| f.to_vec()).unwrap_or_default();
    let mut candidates = known.clone();
    for k in keys {
        let rest = match parent.as_str() {
            "" => Some(k.key),
            p => k.key.strip_prefix(p).and_then(|r| r.strip_prefix('.')),
        };
        if let Some(first) = rest.and_then(|r| r.split(['.', '[']).next()) {
            if !candidates.contains(&first) {
                candidates.push(first);
            }
        }
    }
    let norm = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let wanted = norm(name);
    let close = candidates.iter().find(|k| norm(k) == wanted).or_else(|| {
        candidates
            .iter()
            .map(|k| (strsim::levenshtein(&norm(k), &wanted), k))
            .filter(|(d, k)| *d <= 2 && *d < k.len() / 2)
            .min_by_key(|(d, _)| *d)
            .map(|(_, k)| k)
    });
    match close {
        Some(k) => format!("did you mean `{k}`?"),
        None if known.is_empty() => "punchline reads no keys there".to_string(),
        None => format!("the keys punchline reads here are {}", known.join(", ")),
    }
}
