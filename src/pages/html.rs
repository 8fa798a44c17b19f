//! HTML text: escaping and the pieces every page shares. Everything that
//! comes from git, the cluster or AWS passes through [`esc`] before it is
//! written into a page, so a file named `<script>` is shown, never run.

use std::fmt::Write;

/// Escapes text for an element body or a quoted attribute value.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a URL path (keeping `/`), so a file name cannot end the
/// path or start a query.
pub fn path_escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// `<a href=...>text</a>`; `href` is escaped here.
pub fn link(href: &str, text: &str) -> String {
    format!("<a href=\"{}\">{}</a>", esc(href), esc(text))
}

/// A whole page: `crumbs` are (href, text) from the overview down, the
/// last one being this page.
pub struct Layout<'a> {
    pub base: &'a str,
    pub title: &'a str,
    pub crumbs: &'a [(String, String)],
    /// The JSON document this page shows, offered in the footer.
    pub json: &'a str,
}

impl Layout<'_> {
    pub fn render(&self, main: &str) -> String {
        let mut nav = String::new();
        for (i, (href, text)) in self.crumbs.iter().enumerate() {
            if i > 0 {
                nav.push_str(" <span aria-hidden=\"true\">›</span> ");
            }
            if i + 1 == self.crumbs.len() {
                let _ = write!(nav, "<span aria-current=\"page\">{}</span>", esc(text));
            } else {
                nav.push_str(&link(href, text));
            }
        }
        format!(
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{title} · ferry</title>\n\
             <link rel=\"stylesheet\" href=\"{base}/assets/ferry.css\">\n</head>\n<body>\n\
             <header><nav aria-label=\"Breadcrumb\">{nav}</nav></header>\n\
             <main>\n{main}</main>\n\
             <footer><p>ferry {version} ({commit}) · read-only · {json}</p></footer>\n\
             </body>\n</html>\n",
            title = esc(self.title),
            base = esc(self.base),
            version = esc(crate::build::VERSION),
            commit = esc(crate::build::COMMIT),
            json = link(self.json, "this page as JSON"),
        )
    }
}

/// A state word with its colour; the word itself carries the meaning, so
/// the colour is never the only signal.
pub fn badge(state: &str) -> String {
    format!(
        "<span class=\"badge {}\">{}</span>",
        tone(state),
        esc(state)
    )
}

/// The colour class of a state word.
pub fn tone(state: &str) -> &'static str {
    match state {
        "synced" | "success" => "ok",
        "failing" | "refused" | "failure" | "error" => "bad",
        "drifted" | "pending" => "warn",
        "suspended" => "held",
        _ => "neutral",
    }
}

/// A timestamp as ferry records it (RFC 3339), in a `<time>` element.
pub fn time(at: Option<&str>) -> String {
    match at {
        Some(at) => format!("<time datetime=\"{0}\">{0}</time>", esc(at)),
        None => "—".to_string(),
    }
}

/// The first 12 characters of a commit id, in `<code>`.
pub fn short(sha: &str) -> String {
    format!("<code>{}</code>", esc(sha.get(..12).unwrap_or(sha)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_from_git_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(
            link("https://x/\"onmouseover=\"y", "<b>"),
            "<a href=\"https://x/&quot;onmouseover=&quot;y\">&lt;b&gt;</a>"
        );
    }

    #[test]
    fn a_path_cannot_start_a_query_or_fragment() {
        assert_eq!(path_escape("dags/a b?#.py"), "dags/a%20b%3F%23.py");
        assert_eq!(path_escape("dags/ü.py"), "dags/%C3%BC.py");
    }
}
