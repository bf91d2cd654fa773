//! frp's config templates: frp renders a config file as a Go template before parsing
//! it, and files use that to take secrets from the environment
//! (`auth.token = "{{ .Envs.FRP_AUTH_TOKEN }}"`). punchline renders `{{ .Envs.NAME }}`
//! (with Go's `{{-`/`-}}` trim markers) the same way; any other action is an error, as
//! is a variable that is not set (frp would render `<no value>` and run with it).

/// Renders the `{{ ... }}` actions of `text`; `env` looks a variable up. The error is a
/// message and the 1-based line of the action.
pub(crate) fn render(
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, (String, usize)> {
    if !text.contains("{{") {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut consumed = 0;
    while let Some(start) = rest.find("{{") {
        let line = super::tree::line_of(text, consumed + start);
        let Some(len) = rest[start..].find("}}") else {
            return Err(("`{{` without its `}}`".into(), line));
        };
        let action = &rest[start + 2..start + len];
        let mut before = &rest[..start];
        let mut after_start = start + len + 2;
        let mut inner = action;
        if let Some(s) = inner.strip_prefix('-') {
            inner = s;
            before = before.trim_end();
        }
        if let Some(s) = inner.strip_suffix('-') {
            inner = s;
            let after = &rest[after_start..];
            after_start += after.len() - after.trim_start().len();
        }
        out.push_str(before);
        let inner = inner.trim();
        let name = inner
            .strip_prefix(".Envs.")
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        let Some(name) = name else {
            return Err((
                format!(
                    "template `{{{{{action}}}}}`: only {{{{ .Envs.NAME }}}} (an environment \
                     variable) is supported"
                ),
                line,
            ));
        };
        match env(name) {
            Some(v) => out.push_str(&v),
            None => {
                return Err((
                    format!(
                    "template `{{{{ .Envs.{name} }}}}`: the environment variable {name} is not set"
                ),
                    line,
                ))
            }
        }
        consumed += after_start;
        rest = &rest[after_start..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::render;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            "PORT" => Some("7000".into()),
            _ => None,
        }
    }

    #[test]
    fn renders_envs() {
        assert_eq!(render("a = 1\n", env).unwrap(), "a = 1\n");
        assert_eq!(
            render("t = \"{{ .Envs.TOKEN }}\"\np = {{.Envs.PORT}}\n", env).unwrap(),
            "t = \"s3cret\"\np = 7000\n"
        );
        assert_eq!(
            render("x = \"a {{- .Envs.TOKEN -}} b\"", env).unwrap(),
            "x = \"as3cretb\""
        );
    }

    #[test]
    fn refuses_what_it_cannot_render() {
        let (m, line) = render("a = 1\nt = \"{{ .Envs.NOPE }}\"", env).unwrap_err();
        assert_eq!(line, 2);
        assert!(m.contains("NOPE is not set"), "{m}");
        let (m, _) = render("p = {{ parseNumberRange \"1-3\" }}", env).unwrap_err();
        assert!(m.contains("only {{ .Envs.NAME }}"), "{m}");
        let (m, _) = render("p = {{ .Envs.X", env).unwrap_err();
        assert!(m.contains("without"), "{m}");
    }
}
