//! Strict YAML documents (ferry.yaml, platform.yaml): one error naming the
//! key path and its line, whatever went wrong.

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
    let mut unknown = Vec::new();
    let first = match parse::<T>(text) {
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
