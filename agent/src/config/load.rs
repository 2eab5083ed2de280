//! Reading a config file and turning every problem into a message that names the key,
//! its path and its line, the way a plant engineer needs it:
//!
//! ```text
//! plant.toml:42: devices[0].tags[3].byte_order: unknown variant `ABDC`, expected one of `ABCD`, `CDAB`, `BADC`, `DCBA`
//! ```

use std::fmt;
use std::ops::Range;
use std::path::Path;

use toml_edit::{ImDocument, Item, TableLike};

use super::types::Config;

/// One problem, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line in the file, when the key could be found in it.
    pub line: Option<usize>,
    /// Dotted path of the key (`devices[0].tags[3].address`); empty for the whole file.
    pub path: String,
    pub message: String,
}

/// Why a config was refused: every problem that was found.
#[derive(Debug, Clone)]
pub struct ConfigError {
    /// The file name shown in front of each problem.
    pub origin: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(f, "{}: {n} problem{} in the config:", self.origin, if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            write!(f, "  {}", self.origin)?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
            }
            if p.path.is_empty() {
                writeln!(f, ": {}", p.message)?;
            } else {
                writeln!(f, ": {}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads and checks the config file at `path`.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        origin: origin.clone(),
        problems: vec![Problem { line: None, path: String::new(), message: format!("cannot read the file: {e}") }],
    })?;
    load_str(&text, &origin)
}

/// How long reading the config file again (the `reload` command, SIGHUP) may take.
pub const REREAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a running agent could not take a new config from its file.
#[derive(Debug, thiserror::Error)]
pub enum RereadError {
    #[error("reading {file} took longer than {timeout:?}", timeout = REREAD_TIMEOUT)]
    Timeout { file: String },
    #[error("reading the config failed: {0}")]
    Task(tokio::task::JoinError),
    /// The file was read, and refused: the report names every problem with its line.
    #[error(transparent)]
    Invalid(ConfigError),
}

/// Reads and checks the config file at `path` again, for a running agent (the `reload`
/// command and SIGHUP): off the async workers, within [`REREAD_TIMEOUT`].
pub async fn reread(path: &Path) -> Result<Config, RereadError> {
    let p = path.to_path_buf();
    match tokio::time::timeout(REREAD_TIMEOUT, tokio::task::spawn_blocking(move || load_file(&p))).await {
        Err(_) => Err(RereadError::Timeout { file: path.display().to_string() }),
        Ok(Err(join)) => Err(RereadError::Task(join)),
        Ok(Ok(result)) => result.map_err(RereadError::Invalid),
    }
}

/// Parses and checks config text; `origin` names it in messages.
pub fn load_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let fail = |problems| ConfigError { origin: origin.to_string(), problems };

    // 1. Syntax: toml_edit keeps the position of every key, for the line numbers below.
    let doc = ImDocument::parse(text.to_string()).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        fail(vec![Problem { line, path: String::new(), message: e.message().trim().to_string() }])
    })?;

    // 2. Shape and types, noting every key serde did not use (unknown keys are errors).
    let mut unknown = Vec::new();
    let parsed: Result<Config, toml::de::Error> = serde_ignored::deserialize(toml::Deserializer::new(text), |p| unknown.push(dotted(&p)));
    let mut problems: Vec<Problem> = unknown
        .into_iter()
        .map(|path| Problem {
            line: find_line(&doc, text, &path),
            message: super::former::unknown_key_message(&path, super::former::FORMER_KEYS),
            path,
        })
        .collect();
    let config = match parsed {
        Ok(c) => c,
        Err(e) => {
            problems.extend(type_problems(text, &doc, e));
            return Err(fail(problems));
        }
    };

    // 3. Meaning: ranges, names, references; every problem at once.
    for issue in config.validate().0 {
        problems.push(Problem { line: find_line(&doc, text, &issue.path), path: issue.path, message: issue.message });
    }
    if problems.is_empty() {
        Ok(config)
    } else {
        problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        Err(fail(problems))
    }
}

/// Every type error, not just the first: serde stops at the first bad value, so the bad
/// key is taken out of a copy of the document and the rest is tried again, until it
/// parses or an error cannot be taken out (a missing required key, a bad table).
fn type_problems(text: &str, original: &ImDocument<String>, first: toml::de::Error) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    let mut current = text.to_string();
    let mut error = first;
    for _ in 0..100 {
        let Ok(doc) = ImDocument::parse(current.clone()) else { break };
        let span = error.span();
        let path = span.as_ref().map(|s| path_at(&doc, s.clone())).unwrap_or_default();
        let message = error.message().trim().to_string();
        // A required key we took out ourselves is reported once, as the bad value it was.
        let consequence = removed
            .iter()
            .any(|r| message.starts_with("missing field") && message.contains(&format!("`{}`", r.rsplit('.').next().unwrap_or(r))));
        if !consequence {
            let line = find_line(original, text, &path).or_else(|| span.map(|s| line_of(&current, s.start)));
            problems.push(Problem { line, path: path.clone(), message });
        }
        if path.is_empty() || consequence {
            break;
        }
        let Ok(mut editable) = current.parse::<toml_edit::DocumentMut>() else { break };
        if !remove_at(&mut editable, &path) {
            break;
        }
        removed.push(path);
        current = editable.to_string();
        match toml::from_str::<Config>(&current) {
            Ok(_) => break,
            Err(next) => error = next,
        }
    }
    problems
}

/// Removes the key at a dotted path; false when there is no such key (or it is a table).
fn remove_at(doc: &mut toml_edit::DocumentMut, path: &str) -> bool {
    let steps = steps(path);
    let Some(((last, last_index), parents)) = steps.split_last() else { return false };
    if last_index.is_some() {
        return false;
    }
    let mut table: &mut dyn TableLike = doc.as_table_mut();
    for (key, index) in parents {
        let Some(item) = table.get_mut(key) else { return false };
        let next: Option<&mut dyn TableLike> = match (item, index) {
            (Item::ArrayOfTables(a), Some(i)) => a.get_mut(*i).map(|t| t as &mut dyn TableLike),
            (Item::Value(toml_edit::Value::Array(a)), Some(i)) => {
                a.get_mut(*i).and_then(|v| v.as_inline_table_mut()).map(|t| t as &mut dyn TableLike)
            }
            (item, None) => item.as_table_like_mut(),
            _ => None,
        };
        match next {
            Some(t) => table = t,
            None => return false,
        }
    }
    match table.get(last) {
        Some(item) if item.is_value() => table.remove(last).is_some(),
        _ => false,
    }
}

/// serde_ignored's path as `devices[0].tags[3].key`.
fn dotted(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", dotted(parent)),
        P::Map { parent, key } => {
            let parent = dotted(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => dotted(parent),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}

/// One step of a dotted path: a key, optionally indexed.
fn steps(path: &str) -> Vec<(&str, Option<usize>)> {
    path.split('.')
        .map(|part| match part.split_once('[') {
            Some((key, rest)) => (key, rest.trim_end_matches(']').parse().ok()),
            None => (part, None),
        })
        .collect()
}

/// The line of the key at `path`, or of the closest enclosing key or table that exists
/// (a missing required key is reported at its table).
fn find_line(doc: &ImDocument<String>, text: &str, path: &str) -> Option<usize> {
    fn go(table: &dyn TableLike, steps: &[(&str, Option<usize>)], best: Option<Range<usize>>) -> Option<Range<usize>> {
        let Some(((key, index), rest)) = steps.split_first() else { return best };
        let Some((k, item)) = table.get_key_value(key) else { return best };
        let mut best = k.span().or(best);
        let next: Option<&dyn TableLike> = match (item, index) {
            (Item::ArrayOfTables(a), Some(i)) => a.get(*i).map(|t| {
                best = t.span().or(best.clone());
                t as &dyn TableLike
            }),
            (Item::Value(toml_edit::Value::Array(a)), Some(i)) => a.get(*i).and_then(|v| {
                best = v.span().or(best.clone());
                v.as_inline_table().map(|t| t as &dyn TableLike)
            }),
            (item, _) => item.as_table_like(),
        };
        match next {
            Some(t) if !rest.is_empty() => go(t, rest, best),
            _ => best,
        }
    }
    go(doc.as_table(), &steps(path), None).map(|s| line_of(text, s.start))
}

/// The dotted path of the innermost key whose value contains `span` (for serde errors,
/// which know where they happened but not which key).
fn path_at(doc: &ImDocument<String>, span: Range<usize>) -> String {
    fn walk(table: &dyn TableLike, span: &Range<usize>, prefix: String) -> Option<String> {
        for (key, item) in table.iter() {
            let here = if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") };
            match item {
                Item::ArrayOfTables(a) => {
                    for (i, t) in a.iter().enumerate() {
                        let p = format!("{here}[{i}]");
                        if let Some(found) = walk(t, span, p.clone()) {
                            return Some(found);
                        }
                        if t.span().is_some_and(|s| s.start <= span.start && span.end <= s.end) {
                            return Some(p);
                        }
                    }
                }
                Item::Table(t) => {
                    if let Some(found) = walk(t, span, here.clone()) {
                        return Some(found);
                    }
                    if t.span().is_some_and(|s| s.start <= span.start && span.end <= s.end) {
                        return Some(here);
                    }
                }
                Item::Value(v) => {
                    if v.span().is_some_and(|s| s.start <= span.start && span.end <= s.end) {
                        return Some(here);
                    }
                }
                Item::None => {}
            }
        }
        None
    }
    walk(doc.as_table(), &span, String::new()).unwrap_or_default()
}
