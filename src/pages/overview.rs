//! `/`: every source, one card each.

use std::fmt::Write;

use super::Site;
use super::html::{Layout, badge, esc, link, time};
use crate::status::SourceStatus;

pub fn render(site: &Site, sources: &[SourceStatus], standby: Option<&str>) -> String {
    let mut main = String::from("<h1>Sources</h1>\n");
    let leader = match standby {
        Some(reason) => format!("<p class=\"notice\" role=\"status\">{}</p>\n", esc(reason)),
        None if site.leader_election => {
            "<p>This process holds the leader Lease and syncs.</p>\n".to_string()
        }
        None => "<p>Single instance (no leader election): this process syncs.</p>\n".to_string(),
    };
    main.push_str(&leader);
    if sources.is_empty() {
        main.push_str("<p>No sources are configured.</p>\n");
    }
    // One card per source: a team has a few, and a card reads on a phone
    // where a wide table would scroll.
    for s in sources {
        let live = s
            .published_revision
            .as_ref()
            .or(s
                .kubernetes
                .as_ref()
                .and_then(|k| k.applied_revision.as_ref()))
            .or(s.aws.as_ref().and_then(|a| a.applied_revision.as_ref()))
            .or(s.revision.as_ref().filter(|_| s.last_error.is_none()));
        let _ = writeln!(
            main,
            "<article class=\"source\">\n<h2>{} {}</h2>\n<dl class=\"facts\">",
            link(&site.source_page(&s.name), &s.name),
            badge(s.state)
        );
        let mut fact = |term: &str, value: String| {
            let _ = writeln!(main, "<dt>{term}</dt><dd>{value}</dd>");
        };
        fact("Branch", format!("<code>{}</code>", esc(&s.branch)));
        fact(
            "Live revision",
            live.map(|sha| site.commit_link(&s.name, sha))
                .unwrap_or_else(|| "none yet".into()),
        );
        if let Some(held) = &s.suspended {
            fact("Suspended", esc(&held.reason));
        }
        if let Some(e) = &s.last_error {
            // A head that is not live (refused, failing) is what people came for.
            let head = s
                .revision
                .as_ref()
                .map(|h| format!(" ({})", site.revision_link(&s.name, h)))
                .unwrap_or_default();
            fact("Why", format!("{}{head}", esc(&e.message)));
        }
        fact("Last success", time(s.last_success.as_deref()));
        fact("Next attempt", time(s.next_attempt.as_deref()));
        main.push_str("</dl>\n</article>\n");
    }
    Layout {
        base: &site.base,
        title: "Sources",
        crumbs: &[(site.home(), "ferry".into())],
        json: &format!("{}/api/v1/status", site.base),
    }
    .render(&main)
}
