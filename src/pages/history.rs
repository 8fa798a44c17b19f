//! `/sources/<name>`: what the source is now and its last evaluations.

use std::fmt::Write;

use super::Site;
use super::html::{Layout, badge, esc, time};
use super::view::{self, Part};
use crate::status::{RevisionRecord, SourceStatus};

pub fn render(site: &Site, status: &SourceStatus, history: &[RevisionRecord]) -> String {
    let name = &status.name;
    let mut main = format!("<h1>Source {}</h1>\n", esc(name));
    main.push_str(&summary(site, status));
    main.push_str("<h2>Evaluations</h2>\n");
    if history.is_empty() {
        main.push_str("<p>ferry has evaluated no commit of this source since it started.</p>\n");
    } else {
        main.push_str(&durations(history));
        main.push_str(
            "<div class=\"scroll\"><table class=\"stack\">\n<caption>The last evaluations, newest first</caption>\n\
             <thead><tr><th scope=\"col\">Commit</th><th scope=\"col\">For</th>\
             <th scope=\"col\">Verdict</th><th scope=\"col\">Took</th>\
             <th scope=\"col\">Changed</th><th scope=\"col\">First problem</th>\
             <th scope=\"col\">At</th></tr></thead>\n<tbody>\n",
        );
        for record in history.iter().rev() {
            let _ = writeln!(
                main,
                "<tr><th scope=\"row\">{commit}</th><td data-label=\"For\">{origin}</td>\
                 <td data-label=\"Verdict\">{state} {description}</td><td data-label=\"Took\">{took}</td>\
                 <td data-label=\"Changed\">{changed}</td><td data-label=\"First problem\">{problem}</td>\
                 <td data-label=\"At\">{at}</td></tr>",
                commit = site.revision_link(name, &record.revision),
                origin = esc(&origin(record)),
                state = badge(record.state),
                description = esc(&record.description),
                took = record
                    .duration_ms
                    .map(duration)
                    .unwrap_or_else(|| "—".into()),
                changed = esc(&changed(record)),
                problem = record
                    .detail
                    .as_ref()
                    .and_then(view::first_problem)
                    .map(|p| format!("<code>{}</code>", esc(&p)))
                    .unwrap_or_else(|| "—".into()),
                at = time(Some(&record.at)),
            );
        }
        main.push_str("</tbody>\n</table></div>\n");
    }
    Layout {
        base: &site.base,
        title: &format!("Source {name}"),
        crumbs: &[
            (site.home(), "ferry".into()),
            (site.source_page(name), name.clone()),
        ],
        json: &format!(
            "{}/api/v1/status/{}",
            site.base,
            super::html::path_escape(name)
        ),
    }
    .render(&main)
}

fn summary(site: &Site, s: &SourceStatus) -> String {
    let mut out = String::from("<dl class=\"facts\">\n");
    let mut fact = |term: &str, value: String| {
        let _ = writeln!(out, "<dt>{}</dt><dd>{value}</dd>", esc(term));
    };
    fact("State", badge(s.state));
    fact(
        "Repository",
        format!(
            "<code>{}</code> branch <code>{}</code>",
            esc(&s.url),
            esc(&s.branch)
        ),
    );
    if let Some(head) = &s.revision {
        fact("Head", site.commit_link(&s.name, head));
    }
    if let Some(published) = &s.published_revision {
        fact("Published", site.commit_link(&s.name, published));
    }
    if let Some(applied) = s
        .kubernetes
        .as_ref()
        .and_then(|k| k.applied_revision.as_ref())
    {
        fact("Applied to the cluster", site.commit_link(&s.name, applied));
    }
    if let Some(applied) = s.aws.as_ref().and_then(|a| a.applied_revision.as_ref()) {
        fact("Applied to AWS", site.commit_link(&s.name, applied));
    }
    if let Some(by) = &s.signed_by {
        fact("Signed by", esc(by));
    }
    if let Some(held) = &s.suspended {
        fact(
            "Suspended",
            format!("{} (since {})", esc(&held.reason), time(Some(&held.since))),
        );
    }
    if let Some(e) = &s.last_error {
        let commit = e
            .commit
            .as_ref()
            .map(|c| format!(" at {}", site.revision_link(&s.name, c)))
            .unwrap_or_default();
        fact(
            "Last error",
            format!("<code>{}</code>{commit}: {}", esc(e.kind), esc(&e.message)),
        );
    }
    let drift: Vec<&String> = s
        .kubernetes
        .iter()
        .flat_map(|k| &k.drift)
        .chain(s.aws.iter().flat_map(|a| &a.drift))
        .collect();
    if !drift.is_empty() {
        let items: String = drift
            .iter()
            .map(|d| format!("<li>{}</li>", esc(d)))
            .collect();
        fact("Drifted from git", format!("<ul>{items}</ul>"));
    }
    fact("Last attempt", time(s.last_attempt.as_deref()));
    fact("Last success", time(s.last_success.as_deref()));
    fact("Next attempt", time(s.next_attempt.as_deref()));
    out.push_str("</dl>\n");
    out
}

pub(super) fn origin(record: &RevisionRecord) -> String {
    match record.pull_request {
        Some(pr) => format!("pull request #{pr}"),
        None => "branch".to_string(),
    }
}

pub(super) fn duration(ms: u64) -> String {
    if ms < 10_000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// What the evaluation changed, in counts.
fn changed(record: &RevisionRecord) -> String {
    let Some(detail) = record.detail.as_ref().and_then(|d| d.as_object()) else {
        return "—".into();
    };
    let preview = record.pull_request.is_some();
    let mut parts = Vec::new();
    for value in detail.values() {
        match Part::read(value, preview) {
            Part::Dags(d) if d.published => parts.push(format!(
                "{} file(s) written, {} reused",
                d.stats.files_written,
                d.stats.files_linked + d.stats.files_shared
            )),
            Part::Dags(_) => parts.push("already live".into()),
            Part::KubeOutcome(k) => {
                let count = |s: &str| k.objects.iter().filter(|o| o.status == s).count();
                parts.push(format!(
                    "{} applied, {} pruned, {} failed",
                    count("applied"),
                    count("pruned"),
                    count("failed")
                ));
            }
            Part::KubePlan(k) => {
                let count = |a: &str| k.objects.iter().filter(|o| o.action == a).count();
                parts.push(format!(
                    "{} to create, {} to update, {} to prune",
                    count("create"),
                    count("update"),
                    count("prune")
                ));
            }
            Part::Aws(a) => parts.push(format!(
                "{} AWS change(s)",
                a.changes.len() + a.results.len()
            )),
            Part::Other(_) => {}
        }
    }
    if parts.is_empty() {
        "—".into()
    } else {
        parts.join("; ")
    }
}

/// Sync durations over the history as bars, oldest left: a slow-down is
/// seen before it is read. Presentation attributes only (no `style`), so
/// the strict Content-Security-Policy holds.
fn durations(history: &[RevisionRecord]) -> String {
    let timed: Vec<(&RevisionRecord, u64)> = history
        .iter()
        .filter_map(|r| r.duration_ms.map(|d| (r, d)))
        .collect();
    if timed.len() < 2 {
        return String::new();
    }
    let max = timed.iter().map(|(_, d)| *d).max().unwrap_or(1).max(1);
    let (bar, gap, height) = (8u64, 2u64, 40u64);
    let width = timed.len() as u64 * (bar + gap);
    let mut svg = format!(
        "<figure><svg class=\"durations\" viewBox=\"0 0 {width} {height}\" width=\"{}\" height=\"{height}\" \
         role=\"img\" aria-labelledby=\"durations-caption\">\n",
        width * 2
    );
    for (i, (record, ms)) in timed.iter().enumerate() {
        let h = (ms * height / max).max(1);
        let fill = match record.state {
            "success" => "#1a7f37",
            "pending" => "#9a6700",
            _ => "#cf222e",
        };
        let _ = writeln!(
            svg,
            "<rect x=\"{x}\" y=\"{y}\" width=\"{bar}\" height=\"{h}\" fill=\"{fill}\"><title>{commit}: {took}, {state}</title></rect>",
            x = i as u64 * (bar + gap),
            y = height - h,
            commit = esc(&record.revision[..record.revision.len().min(12)]),
            took = duration(*ms),
            state = esc(record.state),
        );
    }
    let _ = writeln!(
        svg,
        "</svg><figcaption id=\"durations-caption\">How long each evaluation took, oldest first (longest: {}).</figcaption></figure>",
        duration(max)
    );
    svg
}
