//! Config files: the error type and the key checker shared by the server's and the
//! peer's config parsers (`rendezvous::config`, `peer::config`).
//!
//! A file is parsed twice: as a TOML document checked key by key against a [`schema`]
//! (so an unknown or unsupported key is reported with its path and line), then with
//! serde into the crate's own structs.

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
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => None,
        }
    }
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

/// The key checker: walks a parsed TOML document against a table of the keys each
/// place may hold, and names the first key that is unknown, unsupported or mistyped.
pub mod schema {
    use std::ops::Range;

    use toml::de::{DeTable, DeValue};
    use toml::Spanned;

    use super::ConfigError;

    /// The keys of one table: each key's name and what it may hold.
    pub type Schema = &'static [(&'static str, Node)];

    /// What a key may hold.
    #[derive(Clone, Copy)]
    #[allow(dead_code)] // the engine is shared with peer's config; not every kind is used here
    pub enum Node {
        /// A string.
        Str,
        /// An integer (range checks come later, in `validate()`).
        Int,
        /// `true` or `false`.
        Bool,
        /// A list of strings.
        StrList,
        /// A table of strings under any keys (`requestHeaders.set`).
        StrMap,
        /// A table with these keys.
        Table(Schema),
        /// A list of tables with these keys (`[[proxies]]`, `allowPorts`).
        Tables(Schema),
        /// A string naming a kind of thing: one of `ok`, or one of frp's kinds that
        /// punchline does not implement (`frp`). Checked before the table's other keys,
        /// so that an unsupported proxy type is the error reported, not its keys.
        Kind {
            /// Supported values.
            ok: &'static [&'static str],
            /// frp's other values.
            frp: &'static [&'static str],
        },
        /// A boolean that must be `true` (punchline always does it: a no-op); `false`
        /// is refused with this reason.
        True(&'static str),
        /// A key frp has and punchline does not; the reason, or what to do instead.
        Unsupported(&'static str),
    }

    /// Runs the check over one document.
    pub struct Checker<'a> {
        /// Names the document in errors.
        pub origin: &'a str,
        /// The document.
        pub text: &'a str,
    }

    /// A syntax error from the TOML parser (or from serde, which after the key check
    /// only fails if the schema and the model disagree).
    pub fn syntax(origin: &str, text: &str, e: &toml::de::Error) -> ConfigError {
        let line = e.span().map(|s| line_of(text, &s));
        let mut message = e.message().trim().replace('\n', "; ");
        // The parser's message does not quote the line ("duplicate key"): add it.
        let source = line.and_then(|n| text.lines().nth(n - 1)).map(str::trim);
        if let Some(source) = source.filter(|s| !s.is_empty() && s.len() <= 100) {
            message = format!("{message}: `{source}`");
        }
        ConfigError::Syntax {
            origin: origin.to_string(),
            line,
            message,
        }
    }

    /// The 1-based line of a byte offset.
    fn line_of(text: &str, span: &Range<usize>) -> usize {
        let end = span.start.min(text.len());
        text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn join(path: &str, key: &str) -> String {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    }

    fn lookup(schema: Schema, key: &str) -> Option<Node> {
        schema.iter().find(|(k, _)| *k == key).map(|(_, n)| *n)
    }

    fn describe(v: &DeValue<'_>) -> &'static str {
        match v {
            DeValue::String(_) => "a string",
            DeValue::Integer(_) => "an integer",
            DeValue::Float(_) => "a float",
            DeValue::Boolean(_) => "a boolean",
            DeValue::Datetime(_) => "a date",
            DeValue::Array(_) => "a list",
            DeValue::Table(_) => "a table",
        }
    }

    impl<'a> Checker<'a> {
        /// Parses the document and checks it against `schema`.
        pub fn check(&self, schema: Schema) -> Result<Spanned<DeTable<'a>>, ConfigError> {
            let doc = DeTable::parse(self.text).map_err(|e| syntax(self.origin, self.text, &e))?;
            self.table(doc.get_ref(), schema, "")?;
            Ok(doc)
        }

        /// Adds the line of its key (or of the nearest enclosing one that is in the
        /// file) to an error from `validate()`, which works without spans.
        pub fn add_line(&self, mut e: ConfigError, doc: &DeTable<'_>) -> ConfigError {
            if let ConfigError::Invalid { key, line, .. }
            | ConfigError::Unsupported { key, line, .. } = &mut e
            {
                if line.is_none() {
                    *line = self.locate(doc, key);
                }
            }
            e
        }

        /// The line of a key path such as `proxies[2].localPort`, or of the deepest
        /// part of it present in the file.
        fn locate(&self, doc: &DeTable<'_>, path: &str) -> Option<usize> {
            let mut table = doc;
            let mut found = None;
            for segment in path.split('.') {
                let (name, index) = match segment.strip_suffix(']').and_then(|s| s.split_once('['))
                {
                    Some((name, i)) => match i.parse::<usize>() {
                        Ok(i) => (name, Some(i)),
                        Err(_) => break,
                    },
                    None => (segment, None),
                };
                let Some((k, mut v)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name)
                else {
                    break;
                };
                found = Some(k.span());
                if let Some(i) = index {
                    let DeValue::Array(items) = v.get_ref() else {
                        break;
                    };
                    let Some(item) = items.get(i) else { break };
                    found = Some(item.span());
                    v = item;
                }
                match v.get_ref() {
                    DeValue::Table(t) => table = t,
                    _ => break,
                }
            }
            found.and_then(|span| self.line(&span))
        }

        fn line(&self, span: &Range<usize>) -> Option<usize> {
            Some(line_of(self.text, span))
        }

        fn invalid(&self, key: String, span: &Range<usize>, message: String) -> ConfigError {
            ConfigError::Invalid {
                origin: self.origin.to_string(),
                line: self.line(span),
                key,
                message,
            }
        }

        fn table(
            &self,
            table: &DeTable<'_>,
            schema: Schema,
            path: &str,
        ) -> Result<(), ConfigError> {
            let mut entries: Vec<_> = table.iter().collect();
            entries.sort_by_key(|(k, _)| k.span().start);
            let name = entries
                .iter()
                .find(|(k, _)| k.get_ref().as_ref() == "name")
                .and_then(|(_, v)| match v.get_ref() {
                    DeValue::String(s) => Some(s.as_ref()),
                    _ => None,
                });
            for (k, v) in &entries {
                let key: &str = k.get_ref().as_ref();
                if let Some(Node::Kind { ok, frp }) = lookup(schema, key) {
                    self.kind(v, ok, frp, &join(path, key), name)?;
                }
            }
            for (k, v) in &entries {
                let key: &str = k.get_ref().as_ref();
                let at = join(path, key);
                match lookup(schema, key) {
                    None => {
                        return Err(ConfigError::UnknownKey {
                            origin: self.origin.to_string(),
                            line: self.line(&k.span()),
                            key: at,
                            hint: hint(key, schema),
                        })
                    }
                    Some(Node::Kind { .. }) => {}
                    Some(Node::Unsupported(why)) => {
                        let (key, span) = first_leaf(at, k.span(), v);
                        return Err(ConfigError::Unsupported {
                            origin: self.origin.to_string(),
                            line: self.line(&span),
                            key,
                            message: format!("not supported by punchline ({why})"),
                        });
                    }
                    Some(node) => self.value(v, node, at)?,
                }
            }
            Ok(())
        }

        fn kind(
            &self,
            v: &Spanned<DeValue<'_>>,
            ok: &[&str],
            frp: &[&str],
            path: &str,
            name: Option<&str>,
        ) -> Result<(), ConfigError> {
            let DeValue::String(s) = v.get_ref() else {
                return Err(self.invalid(
                    path.to_string(),
                    &v.span(),
                    format!("expected a string, found {}", describe(v.get_ref())),
                ));
            };
            let s: &str = s.as_ref();
            if ok.contains(&s) {
                return Ok(());
            }
            let named = name.map(|n| format!(" ({n:?})")).unwrap_or_default();
            let supported = ok.join(", ");
            let verb = if ok.len() == 1 { "is" } else { "are" };
            if frp.contains(&s) {
                Err(ConfigError::Unsupported {
                    origin: self.origin.to_string(),
                    line: self.line(&v.span()),
                    key: path.to_string(),
                    message: format!(
                        "{s:?}{named} is not supported by punchline ({supported} {verb})"
                    ),
                })
            } else {
                Err(self.invalid(
                    path.to_string(),
                    &v.span(),
                    format!("{s:?}{named} is unknown (punchline supports {supported})"),
                ))
            }
        }

        fn value(
            &self,
            v: &Spanned<DeValue<'_>>,
            node: Node,
            path: String,
        ) -> Result<(), ConfigError> {
            let span = v.span();
            let wrong = |expected: &str, path: String, found: &DeValue<'_>| {
                Err(self.invalid(
                    path,
                    &span,
                    format!("expected {expected}, found {}", describe(found)),
                ))
            };
            match (node, v.get_ref()) {
                (Node::Str, DeValue::String(_)) | (Node::Bool, DeValue::Boolean(_)) => Ok(()),
                (Node::Str, found) => wrong("a string", path, found),
                (Node::Bool, found) => wrong("true or false", path, found),
                (Node::Int, DeValue::Integer(i)) => {
                    match i64::from_str_radix(i.as_str(), i.radix()) {
                        Ok(_) => Ok(()),
                        Err(_) => Err(self.invalid(path, &span, "is out of range".into())),
                    }
                }
                (Node::Int, found) => wrong("an integer", path, found),
                (Node::StrList, DeValue::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        if !matches!(item.get_ref(), DeValue::String(_)) {
                            return wrong("a string", format!("{path}[{i}]"), item.get_ref());
                        }
                    }
                    Ok(())
                }
                (Node::StrList, found) => wrong("a list of strings", path, found),
                (Node::StrMap, DeValue::Table(t)) => {
                    for (k, item) in t.iter() {
                        if !matches!(item.get_ref(), DeValue::String(_)) {
                            return wrong("a string", join(&path, k.get_ref()), item.get_ref());
                        }
                    }
                    Ok(())
                }
                (Node::StrMap, found) => wrong("a table of strings", path, found),
                (Node::Table(schema), DeValue::Table(t)) => self.table(t, schema, &path),
                (Node::Table(_), found) => wrong("a table", path, found),
                (Node::Tables(schema), DeValue::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        let at = format!("{path}[{i}]");
                        match item.get_ref() {
                            DeValue::Table(t) => self.table(t, schema, &at)?,
                            found => return wrong("a table", at, found),
                        }
                    }
                    Ok(())
                }
                (Node::Tables(_), found) => wrong("a list of tables", path, found),
                (Node::True(_), DeValue::Boolean(true)) => Ok(()),
                (Node::True(why), DeValue::Boolean(false)) => Err(ConfigError::Unsupported {
                    origin: self.origin.to_string(),
                    line: self.line(&span),
                    key: path,
                    message: format!("false is not supported by punchline ({why})"),
                }),
                (Node::True(_), found) => wrong("true", path, found),
                // Handled by the callers.
                (Node::Kind { .. } | Node::Unsupported(_), _) => Ok(()),
            }
        }
    }

    /// The path and span of the first key inside an unsupported table, so that the
    /// error names `transport.tls.force`, not just `transport`.
    fn first_leaf(
        path: String,
        span: Range<usize>,
        v: &Spanned<DeValue<'_>>,
    ) -> (String, Range<usize>) {
        match v.get_ref() {
            DeValue::Table(t) => match t.iter().min_by_key(|(k, _)| k.span().start) {
                Some((k, inner)) => first_leaf(join(&path, k.get_ref()), k.span(), inner),
                None => (path, span),
            },
            _ => (path, span),
        }
    }

    /// "did you mean `bindPort`?" when a supported key is close (case, `_`/`-`, or two
    /// edits away), else the list of supported keys.
    fn hint(key: &str, schema: Schema) -> String {
        let norm = |s: &str| -> String {
            s.chars()
                .filter(|c| *c != '_' && *c != '-')
                .flat_map(char::to_lowercase)
                .collect()
        };
        let supported: Vec<&str> = schema
            .iter()
            .filter(|(_, n)| !matches!(n, Node::Unsupported(_)))
            .map(|(k, _)| *k)
            .collect();
        let wanted = norm(key);
        let close = supported.iter().find(|k| norm(k) == wanted).or_else(|| {
            supported
                .iter()
                .map(|k| (edit_distance(&norm(k), &wanted), k))
                .filter(|(d, k)| *d <= 2 && *d < k.len() / 2)
                .min_by_key(|(d, _)| *d)
                .map(|(_, k)| k)
        });
        match close {
            Some(k) => format!("did you mean `{k}`?"),
            None => format!("the keys punchline reads here are {}", supported.join(", ")),
        }
    }

    /// Levenshtein distance (the keys are short).
    fn edit_distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut diagonal = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let above = row[j + 1];
                row[j + 1] = (above + 1)
                    .min(row[j] + 1)
                    .min(diagonal + usize::from(ca != *cb));
                diagonal = above;
            }
        }
        row[b.len()]
    }
}
