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
        let key = match unknown_field(&message) {
            Some(field) if key == "." => field.to_string(),
            Some(field) if key == field || key.ends_with(&format!(".{field}")) => key,
            Some(field) => format!("{key}.{field}"),
            None if key == "." => "(root)".to_string(),
            None => key,
        };
        YamlError { key, line, message }
    })
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

/// The key an "unknown field" or "missing field" message is about.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))?;
    rest.split('`').next()
}
