//! Strict YAML documents (ferry.yaml, platform.yaml): one error naming the
//! key path and its line, whatever went wrong; a key given twice in one
//! mapping is an error everywhere ferry reads YAML (manifests too).

use serde::de::DeserializeOwned;

/// What is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// Dotted key path, list indexes in brackets: `sources[0].url`.
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

/// Deserializes `text`, naming the offending key (the unknown one itself,
/// not only its parent) and its line.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    match check_duplicates(text).into_iter().next() {
        Some(duplicate) => Err(duplicate),
        None => parse_checked(text),
    }
}

/// [`parse`] of a text already checked for duplicate keys.
fn parse_checked<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let key = err.path().to_string();
        let inner = err.into_inner();
        let line = inner.location().map(|l| l.line());
        let message = strip_location(&inner.to_string());
        let message = message.replace(
            "expected a duration",
            "expected a duration such as 30s, 5m or 1h",
        );
        // serde_yaml_ng prefixes its own copy of the path; ferry prints the key once.
        let message = match message.split_once(": ") {
            Some((prefix, rest)) if !prefix.contains(' ') && key.starts_with(prefix) => {
                rest.to_string()
            }
            _ => message,
        };
        let key = full_key(key, &message);
        // serde_yaml_ng marks a bad list item of a block sequence at the
        // item before it; the item's own line is found from the text.
        let line = match key.ends_with(']') {
            true => line_of(text, &key).or(line),
            false => line,
        };
        YamlError { key, line, message }
    })
}

/// Like [`parse`], but an unknown key does not hide the rest: each one is
/// reported (its line found in `text`), taken out, and parsing goes on, so
/// the caller can validate what remains and list every problem at once.
/// Other errors (syntax, types) still stop at the first.
pub fn parse_all_unknown<T: DeserializeOwned>(
    text: &str,
) -> Result<(T, Vec<YamlError>), Vec<YamlError>> {
    let duplicates = check_duplicates(text);
    if !duplicates.is_empty() {
        return Err(duplicates);
    }
    let mut unknown = Vec::new();
    let first = match parse_checked::<T>(text) {
        Ok(value) => return Ok((value, unknown)),
        Err(e) => e,
    };
    if !first.message.starts_with("unknown field") {
        return Err(vec![first]);
    }
    let Ok(mut value) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) else {
        return Err(vec![first]);
    };
    let mut error = first;
    // Bounded: each round removes one key.
    for _ in 0..100 {
        if !error.message.starts_with("unknown field") || !remove_key(&mut value, &error.key) {
            unknown.push(error);
            return Err(unknown);
        }
        error.line = error.line.or_else(|| line_of(text, &error.key));
        unknown.push(error);
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(parsed) => return Ok((parsed, unknown)),
            Err(err) => {
                let key = err.path().to_string();
                let message = strip_location(&err.into_inner().to_string());
                let key = full_key(key, &message);
                let line = line_of(text, &key);
                error = YamlError { key, line, message };
            }
        }
    }
    Err(unknown)
}

/// Removes the mapping key at `path` (`a.b[0].c`); false if it is not there.
fn remove_key(value: &mut serde_yaml_ng::Value, path: &str) -> bool {
    let segments: Vec<&str> = path.split('.').collect();
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut at = value;
    for segment in parents {
        let (name, index) = match segment.split_once('[') {
            Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (*segment, None),
        };
        let Some(next) = at.get_mut(name) else {
            return false;
        };
        at = match index {
            Some(i) => match next.get_mut(i) {
                Some(item) => item,
                None => return false,
            },
            None => next,
        };
    }
    at.as_mapping_mut().and_then(|m| m.remove(*last)).is_some()
}

/// Best-effort line of a key path such as `sources[1].auth.token_file` in
/// block-style YAML: the line of the deepest part of the path that exists.
/// Semantic checks run on parsed values, which carry no positions.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let content = |l: &str| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#')
    };
    let (mut from, mut min_indent, mut found) = (0usize, 0usize, None);
    for segment in key.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let hit = (from..lines.len()).find(|&i| {
            let l = lines[i];
            let t = l.trim_start();
            let t = t.strip_prefix("- ").unwrap_or(t).trim_start();
            indent(l) >= min_indent && t.starts_with(&format!("{name}:"))
        });
        let Some(i) = hit else { return found };
        found = Some(i + 1);
        from = i + 1;
        let key_indent = indent(lines[i])
            + if lines[i].trim_start().starts_with("- ") {
                2
            } else {
                0
            };
        min_indent = key_indent + 1;
        if let Some(index) = index {
            let mut seen = 0;
            let mut item = None;
            for (j, l) in lines.iter().enumerate().skip(from) {
                if !content(l) {
                    continue;
                }
                if indent(l) < key_indent
                    || (indent(l) == key_indent && !l.trim_start().starts_with("- "))
                {
                    break;
                }
                if l.trim_start().starts_with("- ") {
                    if seen == index {
                        item = Some(j);
                        break;
                    }
                    seen += 1;
                }
            }
            let Some(j) = item else { return found };
            found = Some(j + 1);
            from = j;
            min_indent = indent(lines[j]);
        }
    }
    found
}

fn strip_location(message: &str) -> String {
    // serde_yaml_ng appends " at line N column M"; ferry prints the line itself.
    match message.rfind(" at line ") {
        Some(idx) => message[..idx].to_string(),
        None => message.to_string(),
    }
}

/// The path serde reports, completed with the key an unknown/missing
/// field message names (serde stops at its parent).
fn full_key(key: String, message: &str) -> String {
    match unknown_field(message) {
        Some(field) if key == "." => field.to_string(),
        Some(field) if key == field || key.ends_with(&format!(".{field}")) => key,
        Some(field) => format!("{key}.{field}"),
        None if key == "." => "(root)".to_string(),
        None => key,
    }
}

/// The key an "unknown field" or "missing field" message is about.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))?;
    rest.split('`').next()
}

/// A key given twice in one mapping: YAML forbids it and Kubernetes' own
/// tools refuse it, while a plain deserializer keeps one value silently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    pub key: String,
    /// 0-based YAML document of the file.
    pub document: usize,
    pub first_line: usize,
    pub line: usize,
}

impl DuplicateKey {
    /// What is wrong, for a message that names the key already.
    pub fn message(&self) -> String {
        format!(
            "given twice in one mapping (first at line {}): YAML allows a key once, and which value counts would be a guess; keep one",
            self.first_line
        )
    }
}

/// Every key repeated in a block mapping of `text`, with both lines.
/// A line scanner, so it names lines the parser does not keep; flow
/// mappings (`{a: 1, a: 2}`) are left to [`flow_duplicate`].
pub fn duplicate_keys(text: &str) -> Vec<DuplicateKey> {
    struct Mapping {
        indent: usize,
        keys: std::collections::HashMap<String, usize>,
    }
    let mut found = Vec::new();
    let mut stack: Vec<Mapping> = Vec::new();
    let mut document = 0;
    // Lines of a block scalar (`key: |`) deeper than this are text.
    let mut scalar_above: Option<usize> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let trimmed = raw.trim_start();
        let indent = raw.len() - trimmed.len();
        if let Some(above) = scalar_above {
            if trimmed.is_empty() || indent > above {
                continue;
            }
            scalar_above = None;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if indent == 0 && (trimmed.starts_with("---") || trimmed.starts_with("...")) {
            if trimmed.starts_with("---") && line > 1 {
                document += 1;
            }
            stack.clear();
            continue;
        }
        // `- ` items open a new mapping at the column of their first key.
        let mut column = indent;
        let mut rest = trimmed;
        let mut item = false;
        while let Some(after) = rest
            .strip_prefix("- ")
            .or_else(|| (rest == "-").then_some(""))
        {
            item = true;
            let inner = after.trim_start();
            column += rest.len() - inner.len();
            rest = inner;
        }
        let Some((key, value)) = mapping_key(rest) else {
            continue;
        };
        while stack
            .last()
            .is_some_and(|m| m.indent > column || (item && m.indent == column))
        {
            stack.pop();
        }
        if stack.last().is_none_or(|m| m.indent < column) {
            stack.push(Mapping {
                indent: column,
                keys: Default::default(),
            });
        }
        if let Some(top) = stack.last_mut() {
            match top.keys.get(&key) {
                Some(&first_line) => found.push(DuplicateKey {
                    key,
                    document,
                    first_line,
                    line,
                }),
                None => {
                    top.keys.insert(key, line);
                }
            }
        }
        let value = value.split(" #").next().unwrap_or("").trim();
        if value.starts_with('|') || value.starts_with('>') {
            scalar_above = Some(column);
        }
    }
    found
}

/// `key` and the rest of the line when `rest` is a block mapping entry.
fn mapping_key(rest: &str) -> Option<(String, &str)> {
    let (key, after) = if let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'')
    {
        let end = rest[1..].find(quote)? + 1;
        (rest[1..end].to_string(), rest[end + 1..].strip_prefix(':')?)
    } else {
        if rest.starts_with(['{', '[', '&', '*', '!', '|', '>', '%', '@', '`']) {
            return None;
        }
        let colon = rest
            .find(": ")
            .or_else(|| rest.ends_with(':').then(|| rest.len() - 1))?;
        (rest[..colon].trim_end().to_string(), &rest[colon + 1..])
    };
    (after.is_empty() || after.starts_with(' ')).then_some((key, after))
}

/// Duplicate keys of `text` as errors, also those in flow mappings, which
/// the line scanner skips: the YAML parser itself refuses those.
pub fn check_duplicates(text: &str) -> Vec<YamlError> {
    let errors: Vec<YamlError> = duplicate_keys(text)
        .into_iter()
        .map(|d| YamlError {
            key: d.key.clone(),
            line: Some(d.line),
            message: d.message(),
        })
        .collect();
    if errors.is_empty() {
        return flow_duplicate(text).into_iter().collect();
    }
    errors
}

/// The first key repeated in a flow mapping (`{a: 1, a: 2}`), found by
/// the YAML parser; a text without `{` has no flow mapping and is not
/// parsed a second time.
pub fn flow_duplicate(text: &str) -> Option<YamlError> {
    if !text.contains('{') {
        return None;
    }
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        use serde::Deserialize;
        let Err(e) = serde_yaml_ng::Value::deserialize(document) else {
            continue;
        };
        let message = strip_location(&e.to_string());
        if !message.contains("duplicate entry") {
            // Another error: the caller's own parse reports it.
            return None;
        }
        // `labels: duplicate entry with key "a"`: the path first.
        let (key, what) = match message.split_once(": ") {
            Some((path, rest)) if !path.contains(' ') => (path.to_string(), rest),
            _ => ("(mapping)".to_string(), message.as_str()),
        };
        return Some(YamlError {
            key,
            line: e.location().map(|l| l.line()),
            message: format!("{what}: YAML allows a key once per mapping; keep one"),
        });
    }
    None
}

/// What to say about a file that is not UTF-8, at [`utf8_error_line`].
pub const NOT_UTF8: &str =
    "not valid UTF-8 text (this line holds the first byte that is not); save the file as UTF-8";

/// The line of the first byte that is not UTF-8, for an error that says
/// where to look.
pub fn utf8_error_line(bytes: &[u8]) -> Option<usize> {
    let err = std::str::from_utf8(bytes).err()?;
    Some(
        bytes[..err.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1,
    )
}

#[cfg(test)]
mod duplicate_tests {
    use super::*;

    #[test]
    fn a_key_twice_in_one_mapping_is_named_with_both_lines() {
        let text = "a: 1\nb:\n  c: 1\n  d: |\n    c: text, not a key\n  c: 2\nitems:\n  - name: x\n    name: y\n  - name: z\n---\na: 1\n";
        let found = duplicate_keys(text);
        let brief: Vec<(&str, usize, usize, usize)> = found
            .iter()
            .map(|d| (d.key.as_str(), d.document, d.first_line, d.line))
            .collect();
        assert_eq!(brief, vec![("c", 0, 3, 6), ("name", 0, 8, 9)]);
    }

    #[test]
    fn keys_in_sibling_mappings_and_list_items_are_not_duplicates() {
        let text =
            "x:\n  k: 1\ny:\n  k: 2\nlist:\n- k: 1\n- k: 2\n\"quoted\": 1\nurl: http://a:b\n";
        assert!(
            duplicate_keys(text).is_empty(),
            "{:?}",
            duplicate_keys(text)
        );
        assert!(check_duplicates(text).is_empty());
    }

    #[test]
    fn flow_mappings_are_caught_by_the_parser() {
        let errors = check_duplicates("labels: {a: 1, a: 2}\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("duplicate entry"), "{errors:?}");
    }

    #[test]
    fn the_first_byte_that_is_not_utf8_is_placed_on_its_line() {
        assert_eq!(utf8_error_line(b"a: 1\nb: \xff\n"), Some(2));
        assert_eq!(utf8_error_line(b"fine\n"), None);
    }
}
