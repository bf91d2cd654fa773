//! A config document as a tree of values with their lines, read from TOML or from
//! frp's legacy INI format, and a serde deserializer over it that matches key names as
//! frp does: case-insensitively (`subdomainHost` is `subDomainHost`).
//!
//! The deserializer also checks value types itself, so that errors read the same for
//! every key (`expected an integer, found a string`) and carry the key's path and
//! line, and it records the fields of every struct it is asked for: those are the keys
//! a misspelt one is compared with.

use std::{cell::RefCell, collections::BTreeMap, fmt};

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};

/// A value and the line it is on (1-based; `None` for values made up by a converter).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Item {
    pub(crate) value: Value,
    pub(crate) line: Option<usize>,
}

/// A key of a table, its line and its value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) line: Option<usize>,
    pub(crate) item: Item,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Array(Vec<Item>),
    Table(Vec<Entry>),
}

impl Value {
    fn describe(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Bool(_) => "a boolean",
            Value::Array(_) => "a list",
            Value::Table(_) => "a table",
        }
    }
}

impl Item {
    pub(crate) fn new(value: Value, line: Option<usize>) -> Self {
        Item { value, line }
    }

    /// The entry `key` (exact name) of a table, if this is one and has it.
    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut Entry> {
        match &mut self.value {
            Value::Table(entries) => entries.iter_mut().find(|e| e.key == key),
            _ => None,
        }
    }

    /// Sets `path` (dotted, no indexes) in a table, creating tables on the way; a key
    /// that is there already is replaced.
    pub(crate) fn set(&mut self, path: &[&str], item: Item) {
        let Value::Table(entries) = &mut self.value else {
            return;
        };
        let Some((first, rest)) = path.split_first() else {
            return;
        };
        let line = item.line;
        let pos = match entries.iter().position(|e| e.key == *first) {
            Some(p) => p,
            None => {
                entries.push(Entry {
                    key: (*first).to_string(),
                    line,
                    item: Item::new(Value::Table(Vec::new()), line),
                });
                entries.len() - 1
            }
        };
        if rest.is_empty() {
            entries[pos].item = item;
            entries[pos].line = line;
        } else {
            if !matches!(entries[pos].item.value, Value::Table(_)) {
                entries[pos].item = Item::new(Value::Table(Vec::new()), line);
            }
            entries[pos].item.set(rest, item);
        }
    }
}

/// The 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Reads a TOML document. The error is the parser's message and line.
pub(crate) fn from_toml(text: &str) -> Result<Item, (String, Option<usize>)> {
    use toml::de::{DeTable, DeValue};
    use toml::Spanned;

    fn value(text: &str, v: &Spanned<DeValue<'_>>) -> Result<Item, (String, Option<usize>)> {
        let line = Some(line_of(text, v.span().start));
        let value = match v.get_ref() {
            DeValue::String(s) => Value::Str(s.to_string()),
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Value::Int(n),
                Err(_) => return Err(("integer out of range".into(), line)),
            },
            DeValue::Float(f) => match f.as_str().replace('_', "").parse::<f64>() {
                Ok(x) => Value::Float(x),
                Err(_) => Value::Str(f.as_str().to_string()),
            },
            DeValue::Boolean(b) => Value::Bool(*b),
            DeValue::Datetime(d) => Value::Str(d.to_string()),
            DeValue::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| value(text, i))
                    .collect::<Result<_, _>>()?,
            ),
            DeValue::Table(t) => table(text, t)?,
        };
        Ok(Item::new(value, line))
    }

    fn table(text: &str, t: &DeTable<'_>) -> Result<Value, (String, Option<usize>)> {
        let mut entries: Vec<_> = t.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        let mut out = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            out.push(Entry {
                key: k.get_ref().to_string(),
                line: Some(line_of(text, k.span().start)),
                item: value(text, v)?,
            });
        }
        Ok(Value::Table(out))
    }

    let doc = DeTable::parse(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        let mut message = e.message().trim().replace('\n', "; ");
        // The parser's message does not quote the line ("duplicate key"): add it.
        let source = line.and_then(|n| text.lines().nth(n - 1)).map(str::trim);
        if let Some(source) = source.filter(|s| !s.is_empty() && s.len() <= 100) {
            message = format!("{message}: `{source}`");
        }
        (message, line)
    })?;
    Ok(Item::new(table(text, doc.get_ref())?, None))
}

/// Reads a YAML document (frp's `.yaml`/`.yml` files). Values have no lines (the
/// parser does not keep them); a syntax error has its line.
pub(crate) fn from_yaml(text: &str) -> Result<Item, (String, Option<usize>)> {
    use yaml_rust2::{Yaml, YamlLoader};

    fn value(y: &Yaml) -> Result<Option<Item>, (String, Option<usize>)> {
        let v = match y {
            Yaml::Null => return Ok(None),
            Yaml::String(s) => Value::Str(s.clone()),
            Yaml::Integer(i) => Value::Int(*i),
            Yaml::Real(r) => match r.parse::<f64>() {
                Ok(x) => Value::Float(x),
                Err(_) => Value::Str(r.clone()),
            },
            Yaml::Boolean(b) => Value::Bool(*b),
            Yaml::Array(items) => Value::Array(
                items
                    .iter()
                    .filter_map(|i| value(i).transpose())
                    .collect::<Result<_, _>>()?,
            ),
            Yaml::Hash(h) => {
                let mut out = Vec::with_capacity(h.len());
                for (k, v) in h {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        other => {
                            return Err((format!("a key that is not a name: {other:?}"), None))
                        }
                    };
                    // `key:` with nothing after it is null: as if absent, as frp reads it.
                    if let Some(item) = value(v)? {
                        out.push(Entry {
                            key,
                            line: None,
                            item,
                        });
                    }
                }
                Value::Table(out)
            }
            Yaml::Alias(_) | Yaml::BadValue => {
                return Err(("YAML aliases are not supported".into(), None))
            }
        };
        Ok(Some(Item::new(v, None)))
    }

    let docs = YamlLoader::load_from_str(text)
        .map_err(|e| (e.info().to_string(), Some(e.marker().line())))?;
    match docs.as_slice() {
        [] => Ok(Item::new(Value::Table(Vec::new()), None)),
        [doc] => match value(doc)? {
            None => Ok(Item::new(Value::Table(Vec::new()), None)),
            Some(
                item @ Item {
                    value: Value::Table(_),
                    ..
                },
            ) => Ok(item),
            Some(_) => Err(("the document is not a mapping of keys".into(), Some(1))),
        },
        _ => Err(("more than one YAML document in the file".into(), None)),
    }
}

/// Reads a JSON document (frp's `.json` files). Values have no lines; a syntax error
/// has its line.
pub(crate) fn from_json(text: &str) -> Result<Item, (String, Option<usize>)> {
    use serde_json::Value as J;

    fn value(j: &J) -> Option<Item> {
        let v = match j {
            J::Null => return None,
            J::String(s) => Value::Str(s.clone()),
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            J::Array(items) => Value::Array(items.iter().filter_map(value).collect()),
            J::Object(m) => Value::Table(
                m.iter()
                    .filter_map(|(k, v)| {
                        value(v).map(|item| Entry {
                            key: k.clone(),
                            line: None,
                            item,
                        })
                    })
                    .collect(),
            ),
        };
        Some(Item::new(v, None))
    }

    let doc: J = serde_json::from_str(text).map_err(|e| (e.to_string(), Some(e.line())))?;
    match value(&doc) {
        Some(
            item @ Item {
                value: Value::Table(_),
                ..
            },
        ) => Ok(item),
        None => Ok(Item::new(Value::Table(Vec::new()), None)),
        Some(_) => Err(("the document is not an object of keys".into(), Some(1))),
    }
}

/// What a deserialization learns besides the model: the fields of every struct, by
/// path pattern (`proxies[].transport`).
#[derive(Default)]
pub(crate) struct Ctx {
    /// Values are strings that stand for numbers and booleans too (INI).
    pub(crate) lenient: bool,
    pub(crate) fields: RefCell<BTreeMap<String, &'static [&'static str]>>,
}

/// `proxies[2].type` → `proxies[].type`.
pub(crate) fn pattern(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A deserialization error with the path and line of the value it is about.
#[derive(Debug)]
pub(crate) struct DeError {
    pub(crate) path: Option<String>,
    pub(crate) line: Option<usize>,
    pub(crate) message: String,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            path: None,
            line: None,
            message: msg.to_string(),
        }
    }
}

/// The deserializer over one value.
pub(crate) struct De<'a> {
    pub(crate) item: &'a Item,
    pub(crate) path: String,
    pub(crate) ctx: &'a Ctx,
}

impl<'a> De<'a> {
    fn error(&self, message: String) -> DeError {
        DeError {
            path: Some(self.path.clone()),
            line: self.item.line,
            message,
        }
    }

    fn annotate<T>(&self, r: Result<T, DeError>) -> Result<T, DeError> {
        r.map_err(|mut e| {
            if e.path.is_none() {
                e.path = Some(self.path.clone());
                e.line = self.item.line;
            }
            e
        })
    }

    fn wrong(&self, expected: &str) -> DeError {
        self.error(format!(
            "expected {expected}, found {}",
            self.item.value.describe()
        ))
    }

    fn integer(&self) -> Result<i64, DeError> {
        match &self.item.value {
            Value::Int(i) => Ok(*i),
            Value::Str(s) if self.ctx.lenient => s
                .trim()
                .parse()
                .map_err(|_| self.error(format!("{s:?} is not an integer"))),
            _ => Err(self.wrong("an integer")),
        }
    }
}

macro_rules! integers {
    ($($method:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
            let n = self.integer()?;
            let r = v.visit_i64(n);
            self.annotate(r)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for De<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let r = match &self.item.value {
            Value::Str(s) => v.visit_str(s),
            Value::Int(i) => v.visit_i64(*i),
            Value::Float(x) => v.visit_f64(*x),
            Value::Bool(b) => v.visit_bool(*b),
            Value::Array(items) => v.visit_seq(Seq {
                items,
                next: 0,
                path: &self.path,
                ctx: self.ctx,
            }),
            Value::Table(entries) => v.visit_map(Map {
                entries: entries.iter().map(|e| (e.key.clone(), e)).collect(),
                next: 0,
                path: &self.path,
                ctx: self.ctx,
            }),
        };
        self.annotate(r)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let b = match &self.item.value {
            Value::Bool(b) => *b,
            Value::Str(s) if self.ctx.lenient => match s.trim() {
                "true" => true,
                "false" => false,
                _ => return Err(self.error(format!("{s:?} is not true or false"))),
            },
            _ => return Err(self.wrong("true or false")),
        };
        let r = v.visit_bool(b);
        self.annotate(r)
    }

    integers!(
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64
    );

    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(v)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let x = match &self.item.value {
            Value::Float(x) => *x,
            Value::Int(i) => *i as f64,
            Value::Str(s) if self.ctx.lenient => s
                .trim()
                .parse()
                .map_err(|_| self.error(format!("{s:?} is not a number")))?,
            _ => return Err(self.wrong("a number")),
        };
        let r = v.visit_f64(x);
        self.annotate(r)
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.item.value {
            Value::Str(s) => {
                let r = v.visit_str(s);
                self.annotate(r)
            }
            _ => Err(self.wrong("a string")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_str(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.item.value {
            Value::Array(_) => self.deserialize_any(v),
            _ => Err(self.wrong("a list")),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.item.value {
            Value::Table(_) => self.deserialize_any(v),
            _ => Err(self.wrong("a table")),
        }
    }

    /// Matches the table's keys to `fields` case-insensitively, so that the struct
    /// sees its own spelling; a key that matches none is passed as written (and
    /// reported by the caller as unknown).
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        let Value::Table(entries) = &self.item.value else {
            return Err(self.wrong("a table"));
        };
        self.ctx
            .fields
            .borrow_mut()
            .insert(pattern(&self.path), fields);
        let mut keyed: Vec<(String, &Entry)> = Vec::with_capacity(entries.len());
        for e in entries {
            let key = fields
                .iter()
                .find(|f| f.eq_ignore_ascii_case(&e.key))
                .map_or_else(|| e.key.clone(), |f| (*f).to_string());
            if let Some((_, first)) = keyed.iter().find(|(k, _)| *k == key) {
                return Err(DeError {
                    path: Some(join(&self.path, &key)),
                    line: e.line,
                    message: format!(
                        "given twice (as `{}` and `{}`; keys are matched ignoring case)",
                        first.key, e.key
                    ),
                });
            }
            keyed.push((key, e));
        }
        let r = v.visit_map(Map {
            entries: keyed,
            next: 0,
            path: &self.path,
            ctx: self.ctx,
        });
        self.annotate(r)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        v.visit_unit()
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        match &self.item.value {
            Value::Str(s) => {
                let r = v.visit_enum(s.as_str().into_deserializer());
                self.annotate(r)
            }
            _ => Err(self.wrong("a string")),
        }
    }

    serde::forward_to_deserialize_any! {
        i128 u128 bytes byte_buf unit unit_struct tuple tuple_struct identifier
    }
}

struct Seq<'a, 'p> {
    items: &'a [Item],
    next: usize,
    path: &'p str,
    ctx: &'a Ctx,
}

impl<'de> SeqAccess<'de> for Seq<'_, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some(item) = self.items.get(self.next) else {
            return Ok(None);
        };
        let path = format!("{}[{}]", self.path, self.next);
        self.next += 1;
        seed.deserialize(De {
            item,
            path,
            ctx: self.ctx,
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len() - self.next)
    }
}

struct Map<'a, 'p> {
    /// Each entry under the key the visitor is shown.
    entries: Vec<(String, &'a Entry)>,
    next: usize,
    path: &'p str,
    ctx: &'a Ctx,
}

impl<'de> MapAccess<'de> for Map<'_, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((key, _)) = self.entries.get(self.next) else {
            return Ok(None);
        };
        let key: de::value::StringDeserializer<DeError> = key.clone().into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (key, entry) = &self.entries[self.next];
        self.next += 1;
        seed.deserialize(De {
            item: &entry.item,
            path: join(self.path, key),
            ctx: self.ctx,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len() - self.next)
    }
}
