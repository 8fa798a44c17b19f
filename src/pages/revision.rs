//! `/sources/<name>/revisions/<sha>`: what ferry concluded about one
//! commit, as the branch head and as a pull request head.

use std::fmt::Write;

use super::Site;
use super::history::{duration, origin};
use super::html::{Layout, badge, esc, path_escape, short, time, tone};
use super::view::{self, Failure, Hook, Part, Problem};
use crate::status::RevisionRecord;

pub fn render(site: &Site, source: &str, sha: &str, records: &[RevisionRecord]) -> String {
    let on_github = site
        .web(source)
        .map(|web| {
            format!(
                " · {}",
                super::html::link(&format!("{web}/commit/{}", path_escape(sha)), "on GitHub")
            )
        })
        .unwrap_or_default();
    let mut main = format!(
        "<h1>Commit {} of {}</h1>\n<p class=\"meta\"><code>{}</code>{on_github}</p>\n",
        short(sha),
        esc(source),
        esc(sha),
    );
    for record in records {
        main.push_str(&section(site, source, sha, record));
    }
    Layout {
        base: &site.base,
        title: &format!("{} of {source}", &sha[..sha.len().min(12)]),
        crumbs: &[
            (site.home(), "ferry".into()),
            (site.source_page(source), source.to_string()),
            (
                site.revision_page(source, sha),
                sha[..sha.len().min(12)].to_string(),
            ),
        ],
        json: &format!(
            "{}/api/v1/status/{}/revisions/{}",
            site.base,
            path_escape(source),
            path_escape(sha)
        ),
    }
    .render(&main)
}

fn section(site: &Site, source: &str, sha: &str, record: &RevisionRecord) -> String {
    let title = match record.pull_request {
        Some(pr) => format!("As the head of pull request #{pr} (preview: nothing applied)"),
        None => "As the head of the branch".to_string(),
    };
    let mut out = format!("<section>\n<h2>{}</h2>\n", esc(&title));
    let _ = writeln!(
        out,
        "<p class=\"verdict\">{} {}</p>\n<p class=\"meta\">{} · {} · took {}</p>",
        badge(record.state),
        esc(&sentence(record)),
        esc(&origin(record)),
        time(Some(&record.at)),
        record
            .duration_ms
            .map(duration)
            .unwrap_or_else(|| "—".into()),
    );
    let Some(detail) = &record.detail else {
        out.push_str("<p>ferry is still evaluating this commit.</p>\n</section>\n");
        return out;
    };
    let problems = |out: &mut String, title: &str, list: &[Problem]| {
        if list.is_empty() {
            return;
        }
        let _ = writeln!(out, "<h3>{}</h3>\n<ul class=\"problems\">", esc(title));
        for p in list {
            let _ = writeln!(out, "<li>{}</li>", problem(site, source, sha, p));
        }
        out.push_str("</ul>\n");
    };
    let failure: Failure = serde_json::from_value(detail.clone()).unwrap_or_default();
    problems(&mut out, "Problems", &failure.problems);
    if let Some(error) = &failure.error {
        let _ = writeln!(out, "<p class=\"error\">{}</p>", esc(error));
    }
    if let Some(hook) = &failure.hook {
        out.push_str(&hook_output(hook));
    }
    let preview = record.pull_request.is_some();
    if let Some(parts) = detail.as_object() {
        for (target, value) in parts {
            if matches!(target.as_str(), "kind" | "problems" | "hook" | "error") {
                continue;
            }
            let _ = writeln!(out, "<h3>Target <code>{}</code></h3>", esc(target));
            match Part::read(value, preview) {
                Part::Dags(d) => {
                    let link_to = site.dags_link(source).unwrap_or("the DAGs link");
                    if d.published {
                        let _ = writeln!(
                            out,
                            "<p>Published: <code>{}</code> now points at {}. {} file(s) written, {} reused from the previous revision.</p>",
                            esc(link_to),
                            short(sha),
                            d.stats.files_written,
                            d.stats.files_linked + d.stats.files_shared
                        );
                    } else {
                        let _ = writeln!(
                            out,
                            "<p>Already live: <code>{}</code> points at {}.</p>",
                            esc(link_to),
                            short(sha)
                        );
                    }
                    problems(&mut out, "Published with warnings", &d.warnings);
                    if !d.skipped.is_empty() {
                        let _ = writeln!(
                            out,
                            "<p>Not published (ignored): {}</p>",
                            esc(&d.skipped.join(", "))
                        );
                    }
                    if let Some(hook) = &d.hook {
                        out.push_str(&hook_output(hook));
                    }
                }
                Part::KubeOutcome(k) => out.push_str(&kube_outcome(&k)),
                Part::KubePlan(k) => out.push_str(&kube_plan(site, source, sha, &k)),
                Part::Aws(a) => out.push_str(&aws(&a)),
                Part::Other(v) => {
                    let text = serde_json::to_string_pretty(&v).unwrap_or_default();
                    let _ = writeln!(out, "<pre>{}</pre>", esc(&text));
                }
            }
        }
    }
    out.push_str("</section>\n");
    out
}

/// The verdict in one sentence.
fn sentence(record: &RevisionRecord) -> String {
    let d = record.description.trim_end_matches('.');
    match record.state {
        "success" => format!("{d}."),
        "pending" => format!("{d}…"),
        "failure" => format!("Refused: {d}."),
        _ => format!("Could not finish: {d}."),
    }
}

/// `file:line` (a link to the line at this commit on GitHub) and the message.
fn problem(site: &Site, source: &str, sha: &str, p: &Problem) -> String {
    let at = match p.line {
        Some(line) => format!("{}:{line}", p.file),
        None => p.file.clone(),
    };
    let place = match site.web(source).filter(|_| !p.file.is_empty()) {
        Some(web) => {
            let anchor = p.line.map(|l| format!("#L{l}")).unwrap_or_default();
            let href = format!(
                "{web}/blob/{}/{}{anchor}",
                path_escape(sha),
                path_escape(&p.file)
            );
            format!("<a href=\"{}\"><code>{}</code></a>", esc(&href), esc(&at))
        }
        None => format!("<code>{}</code>", esc(&at)),
    };
    format!("{place}: {}", esc(&p.message))
}

/// The validation command's output, collapsed: the verdict says enough
/// for most readers.
fn hook_output(hook: &Hook) -> String {
    let result = if hook.timed_out {
        "timed out".to_string()
    } else if hook.success {
        "passed".to_string()
    } else {
        match hook.exit_code {
            Some(code) => format!("failed (exit {code})"),
            None => "failed".to_string(),
        }
    };
    format!(
        "<details><summary>Validation command <code>{}</code> {} in {}</summary>\n<pre>{}</pre>\n</details>\n",
        esc(&hook.command.join(" ")),
        esc(&result),
        duration(hook.duration_ms),
        esc(&hook.output)
    )
}

fn kube_outcome(k: &view::KubeOutcome) -> String {
    if k.unchanged {
        return "<p>The cluster already matched this revision: nothing was written.</p>\n".into();
    }
    let mut out = String::from(
        "<div class=\"scroll\"><table>\n<caption>Apply outcome and health per object</caption>\n\
         <thead><tr><th scope=\"col\">Object</th><th scope=\"col\">Result</th>\
         <th scope=\"col\">Health</th></tr></thead>\n<tbody>\n",
    );
    for o in &k.objects {
        let result = match &o.error {
            Some(e) => format!("{} {}", badge("failure"), esc(e)),
            None => esc(&o.status),
        };
        let health = match &o.health {
            Some(h) => {
                let word = match h.state.as_str() {
                    "current" => "success",
                    "inprogress" => "pending",
                    "unknown" => "neutral",
                    _ => "failure",
                };
                let reason = h.reason.as_deref().map(esc).unwrap_or_default();
                format!(
                    "<span class=\"badge {}\">{}</span> {reason}",
                    tone(word),
                    esc(&h.state)
                )
            }
            None => "—".into(),
        };
        let _ = writeln!(
            out,
            "<tr><th scope=\"row\"><code>{}</code></th><td>{result}</td><td>{health}</td></tr>",
            esc(&o.id.to_string())
        );
    }
    out.push_str("</tbody>\n</table></div>\n");
    out
}

fn kube_plan(site: &Site, source: &str, sha: &str, k: &view::KubePlan) -> String {
    let mut out = String::new();
    if let Some(why) = &k.prune_refused {
        let _ = writeln!(out, "<p class=\"error\" role=\"alert\">{}</p>", esc(why));
    }
    if !k.errors.is_empty() {
        out.push_str("<ul class=\"problems\">\n");
        for e in &k.errors {
            let p = Problem::new(&e.origin.file, e.origin.line, e.message.clone());
            let _ = writeln!(out, "<li>{}</li>", problem(site, source, sha, &p));
        }
        out.push_str("</ul>\n");
    }
    let count = |a: &str| k.objects.iter().filter(|o| o.action == a).count();
    let _ = writeln!(
        out,
        "<p>{} to create, {} to update, {} to prune, {} unchanged.</p>",
        count("create"),
        count("update"),
        count("prune"),
        count("unchanged")
    );
    out.push_str("<ul class=\"plan\">\n");
    // Refusals first, then what changes; unchanged objects last.
    let mut objects: Vec<_> = k.objects.iter().collect();
    objects.sort_by_key(|o| (o.error.is_none(), o.action == "unchanged"));
    for o in objects {
        let from = o
            .origin
            .as_ref()
            .map(|origin| {
                let line = origin.line.map(|l| format!(":{l}")).unwrap_or_default();
                format!(" <span class=\"meta\">({}{line})</span>", esc(&origin.file))
            })
            .unwrap_or_default();
        let _ = write!(
            out,
            "<li><span class=\"action {action}\">{action}</span> <code>{id}</code>{from}",
            action = esc(&o.action),
            id = esc(&o.id.to_string()),
        );
        if let Some(error) = &o.error {
            let _ = write!(out, "<p class=\"error\">{}</p>", esc(error));
        }
        if let Some(note) = &o.note {
            let _ = write!(out, "<p class=\"meta\">{}</p>", esc(note));
        }
        if !o.changes.is_empty() {
            out.push_str("<pre class=\"diff\">");
            for c in &o.changes {
                let show = |v: &Option<serde_json::Value>| {
                    v.as_ref().map(|v| v.to_string()).unwrap_or_default()
                };
                let line = |class: &str, mark: char, value: &Option<serde_json::Value>| {
                    format!(
                        "<span class=\"{class}\">{mark} {}: {}</span>\n",
                        esc(&c.path),
                        esc(&show(value))
                    )
                };
                match c.op.as_str() {
                    "added" => out.push_str(&line("add", '+', &c.after)),
                    "removed" => out.push_str(&line("del", '-', &c.before)),
                    _ => {
                        out.push_str(&line("del", '-', &c.before));
                        out.push_str(&line("add", '+', &c.after));
                    }
                }
            }
            out.push_str("</pre>");
        }
        out.push_str("</li>\n");
    }
    out.push_str("</ul>\n");
    out
}

fn aws(a: &view::Aws) -> String {
    let mut out = String::new();
    for e in &a.errors {
        let _ = writeln!(out, "<p class=\"error\">{}</p>", esc(e));
    }
    let rows: Vec<&view::AwsChange> = a.changes.iter().chain(&a.results).collect();
    if !rows.is_empty() {
        out.push_str("<ul class=\"plan\">\n");
        for c in rows {
            let _ = write!(
                out,
                "<li><span class=\"action {action}\">{action}</span> <code>{}</code>",
                esc(&c.resource),
                action = esc(&c.action)
            );
            if let Some(error) = &c.error {
                let _ = write!(out, "<p class=\"error\">{}</p>", esc(error));
            }
            if !c.fields.is_empty() {
                out.push_str("<pre class=\"diff\">");
                for f in &c.fields {
                    let _ = writeln!(
                        out,
                        "<span class=\"chg\">~ {}: {} → {}</span>",
                        esc(&f.field),
                        esc(&f.before),
                        esc(&f.after)
                    );
                }
                out.push_str("</pre>");
            }
            out.push_str("</li>\n");
        }
        out.push_str("</ul>\n");
    }
    for (title, list) in [
        ("Drift ferry leaves alone", &a.drift),
        ("Cleaned up", &a.cleaned),
    ] {
        if !list.is_empty() {
            let items: String = list
                .iter()
                .map(|d| format!("<li>{}</li>", esc(d)))
                .collect();
            let _ = writeln!(out, "<h4>{title}</h4>\n<ul>{items}</ul>");
        }
    }
    if out.is_empty() {
        out.push_str("<p>No AWS changes.</p>\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::RevisionRecord;

    fn record(state: &'static str, pr: Option<u64>, detail: serde_json::Value) -> RevisionRecord {
        RevisionRecord::new(
            "a".repeat(40),
            if pr.is_some() {
                "pull_request"
            } else {
                "branch"
            },
            pr,
            state,
            "1 problem(s): <img src=x onerror=alert(1)>".into(),
            Some(detail),
        )
    }

    #[test]
    fn nothing_from_git_becomes_markup() {
        let detail = serde_json::json!({
            "kind": "validation_failed",
            "problems": [{"file": "dags/<script>x</script>.py", "line": 3, "message": "bad <b>"}],
            "hook": {"command": ["check", "<i>"], "success": false, "exit_code": 2,
                     "timed_out": false, "output": "</pre><script>y</script>", "duration_ms": 5},
        });
        let page = render(
            &Site::default(),
            "dags",
            &"a".repeat(40),
            &[record("failure", None, detail)],
        );
        for raw in ["<script", "<img", "<b>", "<i>", "</pre><"] {
            assert!(!page.contains(raw), "{raw} reached the page:\n{page}");
        }
        assert!(
            page.contains("<code>dags/&lt;script&gt;x&lt;/script&gt;.py:3</code>: bad &lt;b&gt;")
        );
        assert!(page.contains(
            "<details><summary>Validation command <code>check &lt;i&gt;</code> failed (exit 2)"
        ));
    }

    #[test]
    fn a_preview_shows_the_plan_and_a_branch_the_outcome() {
        let plan = serde_json::json!({"kubernetes": {"target": "k", "revision": "r", "errors": [],
            "objects": [{"id": {"group": "", "kind": "Secret", "namespace": "ml", "name": "creds"},
                         "origin": {"file": "manifests/s.yaml", "document": 0, "line": 4},
                         "action": "update", "error": null, "note": null,
                         "changes": [{"path": "data.password", "op": "changed",
                                      "before": "<redacted>", "after": "<redacted>"}]}]}});
        let page = render(
            &Site::default(),
            "p",
            &"a".repeat(40),
            &[record("success", Some(3), plan)],
        );
        assert!(
            page.contains(
                "<span class=\"del\">- data.password: &quot;&lt;redacted&gt;&quot;</span>"
            ),
            "{page}"
        );
        assert!(page.contains("(manifests/s.yaml:4)"), "{page}");
        assert!(page.contains("1 to update"), "{page}");

        let outcome = serde_json::json!({"kubernetes": {"revision": "r", "unchanged": false,
            "objects": [{"id": {"group": "apps", "kind": "Deployment", "namespace": "ml", "name": "web"},
                         "status": "applied", "error": null,
                         "health": {"state": "failed", "reason": "ImagePullBackOff"}}]}});
        let page = render(
            &Site::default(),
            "p",
            &"a".repeat(40),
            &[record("failure", None, outcome)],
        );
        assert!(
            page.contains("<code>Deployment.apps ml/web</code>"),
            "{page}"
        );
        assert!(
            page.contains("<span class=\"badge bad\">failed</span> ImagePullBackOff"),
            "{page}"
        );
    }
}
