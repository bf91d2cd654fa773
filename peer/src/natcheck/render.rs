//! The report for people.

use std::fmt::Write as _;

use super::report::{Behaviour, Report, Transport, UnsolicitedSyn};

fn yes_no(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "not measured",
    }
}

fn transport_text(out: &mut String, title: &str, t: &Transport) {
    let _ = writeln!(out, "{title}");
    if !t.reachable {
        let _ = writeln!(
            out,
            "  no answer: {}",
            t.error.as_deref().unwrap_or("unknown")
        );
        for n in &t.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        return;
    }
    let public = t.public.map(|a| a.to_string()).unwrap_or_default();
    let local = t.local.map(|a| format!(" (local {a})")).unwrap_or_default();
    let nat = match t.behind_nat {
        Some(false) => " — no NAT",
        _ => "",
    };
    let _ = writeln!(out, "  public address   {public}{local}{nat}");
    let _ = writeln!(out, "  local port kept  {}", yes_no(t.port_preserved));
    let seen: Vec<String> = t
        .observations
        .iter()
        .map(|o| format!("{} via {}", o.public, o.server))
        .collect();
    let mapping = t.mapping.map(Behaviour::describe).unwrap_or("not measured");
    let _ = writeln!(out, "  mapping          {mapping}");
    if seen.len() > 1 {
        let _ = writeln!(out, "                   ({})", seen.join(", "));
    }
    let filtering = t
        .filtering
        .map(Behaviour::describe)
        .unwrap_or("not measured");
    let _ = writeln!(out, "  filtering        {filtering}");
    let _ = writeln!(out, "  hairpinning      {}", yes_no(t.hairpinning));
    if let Some(u) = t.unsolicited_syn {
        let what = match u {
            UnsolicitedSyn::Refused => "refused (RST or ICMP): an early punch is redialed at once",
            UnsolicitedSyn::Dropped => "dropped silently: an early punch is retransmitted",
        };
        let _ = writeln!(out, "  unsolicited SYN  {what}");
    }
    for n in &t.notes {
        let _ = writeln!(out, "  note: {n}");
    }
}

/// The report for people.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let alt = r
        .alternate
        .map(|a| format!(", alternate {a}"))
        .unwrap_or_default();
    let _ = writeln!(out, "NAT check via {}{alt}\n", r.server);
    transport_text(&mut out, "TCP (what direct links use)", &r.tcp);
    out.push('\n');
    transport_text(&mut out, "UDP (STUN)", &r.udp);
    out.push('\n');
    if !r.portmap.is_empty() {
        let _ = writeln!(out, "Port mapping (asked of the default gateway)");
        for p in &r.portmap {
            let what = match (&p.mapped, &p.error) {
                (Some(m), _) => format!("answered: test port mapped to {m} (and deleted)"),
                (None, Some(e)) => format!("no: {e}"),
                (None, None) => "no".to_string(),
            };
            let _ = writeln!(out, "  {:<9} {what}", p.protocol.name());
        }
        match r.portmap.iter().find(|p| p.mapped.is_some()) {
            Some(p) => {
                let _ = writeln!(
                    out,
                    "  punch ports are mapped with {}: peers connect to them whatever the NAT type",
                    p.protocol.name()
                );
            }
            None => {
                let _ = writeln!(out, "  none answered: no port mappings");
            }
        }
        out.push('\n');
    }
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    let v = &r.verdict;
    let nat = match v.nat.as_str() {
        "none" => "no NAT".to_string(),
        "unknown" => "NAT type unknown".to_string(),
        other => format!("{other} NAT"),
    };
    // "expect relay with nobody" reads badly: say it the other way round.
    let relay = match v.relay_with.strip_prefix("nobody") {
        Some(rest) => format!("no peer should need the relay{rest}"),
        None => format!("expect relay with {}", v.relay_with),
    };
    let _ = writeln!(
        out,
        "Verdict: {nat} (from {}). Direct links will work with {}; {relay}.",
        v.basis, v.direct_with
    );
    out
}
