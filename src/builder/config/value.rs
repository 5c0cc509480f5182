//! An ordered TOML value tree where every key and value remembers where it was
//! written (file, line, column), so errors about merged values still point at the
//! file that set them. Tables keep their written order (emerge_bools become argv in
//! that order).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::de::{DeTable, DeValue};

use super::ConfigError;

/// Where a key or value was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    pub file: Arc<Path>,
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// 1-based line and column (in characters) of byte offset `at` in `text`.
pub fn line_col(text: &str, at: usize) -> (usize, usize) {
    LineIndex::new(text).line_col(at)
}

/// Line starts and multi-byte characters of one text, indexed once so that every
/// location costs a binary search instead of a scan from the start (a scan per
/// value made resolution quadratic in the file's size).
#[derive(Debug)]
pub struct LineIndex {
    len: usize,
    /// Byte offset of each line's first byte; `[0]` is 0.
    line_starts: Vec<usize>,
    /// For each character longer than one byte: its offset and the bytes beyond one
    /// that it and every earlier such character take (a running sum).
    wide: Vec<(usize, usize)>,
}

impl LineIndex {
    pub fn new(text: &str) -> Self {
        let mut line_starts = vec![0];
        let mut wide = Vec::new();
        let mut extra = 0;
        for (i, c) in text.char_indices() {
            if c == '\n' {
                line_starts.push(i + 1);
            } else if c.len_utf8() > 1 {
                extra += c.len_utf8() - 1;
                wide.push((i, extra));
            }
        }
        LineIndex {
            len: text.len(),
            line_starts,
            wide,
        }
    }

    /// Extra bytes of the multi-byte characters starting before `at`.
    fn extra_before(&self, at: usize) -> usize {
        match self.wide.partition_point(|&(i, _)| i < at) {
            0 => 0,
            n => self.wide[n - 1].1,
        }
    }

    /// 1-based line and column (in characters) of byte offset `at`.
    pub fn line_col(&self, at: usize) -> (usize, usize) {
        let at = at.min(self.len);
        // Lines whose start is at or before `at`; at least one (offset 0).
        let line = self.line_starts.partition_point(|&s| s <= at);
        let start = self.line_starts[line - 1];
        let bytes = at - start;
        let col = bytes - (self.extra_before(at) - self.extra_before(start));
        (line, col + 1)
    }
}

#[derive(Debug, Clone)]
pub enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<LocatedVal>),
    Table(Table),
}

/// A value and where it was written.
#[derive(Debug, Clone)]
pub struct LocatedVal {
    pub val: Val,
    pub at: Loc,
}

impl LocatedVal {
    /// TOML's name for the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self.val {
            Val::Str(_) => "string",
            Val::Int(_) => "integer",
            Val::Float(_) => "float",
            Val::Bool(_) => "boolean",
            Val::Datetime(_) => "datetime",
            Val::Array(_) => "array",
            Val::Table(_) => "table",
        }
    }

    pub fn as_table(&self) -> Option<&Table> {
        match &self.val {
            Val::Table(t) => Some(t),
            _ => None,
        }
    }
}

/// One `key = value` of a table.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub key_at: Loc,
    pub value: LocatedVal,
}

/// An ordered table. Keys are unique (the TOML parser rejects duplicates; merges
/// replace in place). Each key's position is indexed, so a lookup costs the same in
/// a table of ten keys as in one of eighty thousand (merges and environment
/// computation look every key up, which was quadratic over a plain list).
#[derive(Debug, Clone, Default)]
pub struct Table {
    entries: Vec<Entry>,
    /// Position of each key in `entries`; never iterated, so order stays written.
    index: HashMap<String, usize>,
}

impl FromIterator<Entry> for Table {
    fn from_iter<I: IntoIterator<Item = Entry>>(iter: I) -> Self {
        let mut t = Table::default();
        for e in iter {
            t.insert(e);
        }
        t
    }
}

impl Table {
    /// The entries in written (merge) order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn get(&self, key: &str) -> Option<&LocatedVal> {
        self.entry(key).map(|e| &e.value)
    }

    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.index.get(key).and_then(|&i| self.entries.get(i))
    }

    fn entry_mut(&mut self, key: &str) -> Option<&mut Entry> {
        let i = *self.index.get(key)?;
        self.entries.get_mut(i)
    }

    /// Sets `key`, keeping its position when it already exists, appending otherwise.
    pub fn insert(&mut self, entry: Entry) {
        match self.entry_mut(&entry.key) {
            Some(old) => *old = entry,
            None => {
                self.index.insert(entry.key.clone(), self.entries.len());
                self.entries.push(entry);
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Entry> {
        let i = self.index.remove(key)?;
        let e = self.entries.remove(i);
        for later in self.index.values_mut() {
            if *later > i {
                *later -= 1;
            }
        }
        Some(e)
    }

    pub fn table(&self, key: &str) -> Option<&Table> {
        self.get(key).and_then(LocatedVal::as_table)
    }

    /// `over` merged into `self` recursively: tables merge key by key, anything
    /// else (arrays included) is replaced. Used for per-seed/tag overrides (B05).
    pub fn deep_merge(&mut self, over: &Table) {
        for e in &over.entries {
            let merged = match (self.entry_mut(&e.key), &e.value.val) {
                (Some(old), Val::Table(t)) => match &mut old.value.val {
                    Val::Table(ot) => {
                        ot.deep_merge(t);
                        true
                    }
                    _ => false,
                },
                _ => false,
            };
            if !merged {
                self.insert(e.clone());
            }
        }
    }

    /// genTree's default-file merge (kept per B06): per top-level key,
    /// two tables merge one level deep (newer keys replace), an existing array is
    /// extended, anything else is replaced.
    pub fn merge_default_file(&mut self, over: &Table) {
        for e in &over.entries {
            let Some(old) = self.entry_mut(&e.key) else {
                self.insert(e.clone());
                continue;
            };
            match (&mut old.value.val, &e.value.val) {
                (Val::Table(ot), Val::Table(nt)) => {
                    for ne in &nt.entries {
                        ot.insert(ne.clone());
                    }
                }
                (Val::Array(oa), Val::Array(na)) => oa.extend(na.iter().cloned()),
                _ => *old = e.clone(),
            }
        }
    }
}

/// Parses TOML text into a located, ordered table.
pub fn parse(text: &str, file: &Path) -> Result<Table, ConfigError> {
    let file: Arc<Path> = Arc::from(file);
    let doc = DeTable::parse(text).map_err(|e| {
        let (line, col) = line_col(text, e.span().map_or(0, |s| s.start));
        ConfigError::Parse {
            path: file.to_path_buf(),
            line,
            col,
            message: e.message().trim().to_string(),
        }
    })?;
    let conv = Conv {
        lines: LineIndex::new(text),
        file,
    };
    conv.table(doc.get_ref())
}

struct Conv {
    lines: LineIndex,
    file: Arc<Path>,
}

impl Conv {
    fn loc(&self, span: std::ops::Range<usize>) -> Loc {
        let (line, col) = self.lines.line_col(span.start);
        Loc {
            file: self.file.clone(),
            line,
            col,
        }
    }

    fn table(&self, t: &DeTable<'_>) -> Result<Table, ConfigError> {
        let mut out = Table::default();
        for (k, v) in t.iter() {
            out.insert(Entry {
                key: k.get_ref().to_string(),
                key_at: self.loc(k.span()),
                value: self.value(v.get_ref(), v.span())?,
            });
        }
        Ok(out)
    }

    fn value(
        &self,
        v: &DeValue<'_>,
        span: std::ops::Range<usize>,
    ) -> Result<LocatedVal, ConfigError> {
        let at = self.loc(span);
        let bad_number = |at: &Loc, raw: &str| ConfigError::Parse {
            path: at.file.to_path_buf(),
            line: at.line,
            col: at.col,
            message: format!("number `{raw}` out of range"),
        };
        let val = match v {
            DeValue::String(s) => Val::Str(s.to_string()),
            DeValue::Integer(i) => Val::Int(
                i64::from_str_radix(i.as_str(), i.radix())
                    .map_err(|_| bad_number(&at, i.as_str()))?,
            ),
            DeValue::Float(f) => Val::Float(
                f.as_str()
                    .parse::<f64>()
                    .map_err(|_| bad_number(&at, f.as_str()))?,
            ),
            DeValue::Boolean(b) => Val::Bool(*b),
            DeValue::Datetime(d) => Val::Datetime(d.to_string()),
            DeValue::Array(a) => Val::Array(
                a.iter()
                    .map(|x| self.value(x.get_ref(), x.span()))
                    .collect::<Result<_, _>>()?,
            ),
            DeValue::Table(t) => Val::Table(self.table(t)?),
        };
        Ok(LocatedVal { val, at })
    }
}

/// A synthetic location for values that come from code rather than a file.
pub fn code_loc(what: &str) -> Loc {
    Loc {
        file: Arc::from(PathBuf::from(what).as_path()),
        line: 0,
        col: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Table {
        parse(s, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn line_col_counts_from_one() {
        let cases = [
            ("abc", 0, (1, 1)),
            ("a\nbc", 3, (2, 2)),
            ("é\nx", 3, (2, 1)),
            ("éx", 2, (1, 2)),
            ("x\néé\n€y", 0, (1, 1)),
            ("x\néé\n€y", 2, (2, 1)),
            ("x\néé\n€y", 4, (2, 2)),
            ("x\néé\n€y", 6, (2, 3)),
            ("x\néé\n€y", 7, (3, 1)),
            ("x\néé\n€y", 10, (3, 2)),
            ("x\néé\n€y", 99, (3, 3)),
            ("", 0, (1, 1)),
            ("\n", 1, (2, 1)),
        ];
        for (text, at, want) in cases {
            assert_eq!(line_col(text, at), want, "{text:?} @ {at}");
        }
    }

    #[test]
    fn line_index_agrees_with_a_scan_at_every_offset() {
        fn scan(text: &str, at: usize) -> (usize, usize) {
            let before = &text[..at];
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            (
                before.matches('\n').count() + 1,
                before[line_start..].chars().count() + 1,
            )
        }
        let text = "a = \"é€\"\n\n[t]\nk = [\"𝄞x\", \"y\"]\nz\u{e9}\u{301} = 1\n";
        let index = LineIndex::new(text);
        for (at, _) in text.char_indices().chain([(text.len(), ' ')]) {
            assert_eq!(index.line_col(at), scan(text, at), "@ {at}");
        }
    }

    #[test]
    fn keeps_written_order_and_locations() {
        let t = p("z = 1\na = 2\n[emerge_bools]\nverbose = true\nnodeps = false\n");
        let keys: Vec<_> = t.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["z", "a", "emerge_bools"]);
        let b = t.table("emerge_bools").unwrap();
        let keys: Vec<_> = b.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["verbose", "nodeps"]);
        let e = b.entry("nodeps").unwrap();
        assert_eq!((e.key_at.line, e.key_at.col), (5, 1));
        assert_eq!((e.value.at.line, e.value.at.col), (5, 10));
    }

    #[test]
    fn malformed_toml_reports_line_and_column() {
        let err = parse("a = 1\nb = = 2\n", Path::new("bad.toml")).unwrap_err();
        let ConfigError::Parse { line, col, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!((*line, *col), (2, 5));
        assert!(err.to_string().starts_with("bad.toml:2:5: "), "{err}");
    }

    #[test]
    fn default_file_merge_is_one_level_and_appends_arrays() {
        let mut a = p(
            "x = [1]\ns = \"a\"\n[env]\nfeatures = \"a\"\nuse = \"u\"\n[default.s1]\nprofile = \"p\"\n[default.s1.env]\nuse = \"x\"\n",
        );
        let b =
            p("x = [2]\ns = \"b\"\n[env]\nfeatures = \"b\"\n[default.s1.env]\ncflags = \"-O2\"\n");
        a.merge_default_file(&b);
        let x: Vec<_> = match &a.get("x").unwrap().val {
            Val::Array(v) => v.iter().map(|n| matches!(n.val, Val::Int(_))).collect(),
            _ => panic!(),
        };
        assert_eq!(x.len(), 2);
        assert!(matches!(&a.get("s").unwrap().val, Val::Str(s) if s == "b"));
        let env = a.table("env").unwrap();
        assert!(matches!(&env.get("features").unwrap().val, Val::Str(s) if s == "b"));
        assert!(
            env.get("use").is_some(),
            "shallow merge keeps other env keys"
        );
        // [default] merges per seed name: the later s1 table replaces the whole earlier one.
        let s1 = a.table("default").unwrap().table("s1").unwrap();
        assert!(s1.get("profile").is_none());
        assert!(s1.table("env").unwrap().get("use").is_none());
    }

    #[test]
    fn deep_merge_recurses_into_tables() {
        let mut a = p("[env]\nfeatures = \"a\"\nbinpkg_format = \"gpkg\"\n[t]\nk = [1, 2]\n");
        let b = p("[env]\nfeatures = \"b\"\n[t]\nk = [3]\n");
        a.deep_merge(&b);
        let env = a.table("env").unwrap();
        assert!(matches!(&env.get("features").unwrap().val, Val::Str(s) if s == "b"));
        assert!(matches!(&env.get("binpkg_format").unwrap().val, Val::Str(s) if s == "gpkg"));
        assert!(
            matches!(&a.table("t").unwrap().get("k").unwrap().val, Val::Array(v) if v.len() == 1)
        );
    }
}
