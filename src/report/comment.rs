//! The PR preview comment, rendered from target-neutral previews so every
//! effector (Kubernetes now, AWS next) shows up the same way: a summary
//! table first, then one collapsible section per changed object, cut to
//! GitHub's comment limit with a line saying what was cut.

use crate::dags::HookReport;
use crate::problem::Problem;

/// GitHub refuses comment bodies longer than this.
pub const COMMENT_LIMIT: usize = 65_535;
/// Room kept for the cut notice and the footer.
const RESERVE: usize = 1_024;

/// The hidden first line by which ferry finds its comment again.
pub fn marker(source: &str) -> String {
    format!("<!-- ferry:preview source={source} -->")
}

/// What one target would do, in words any target can produce.
pub struct TargetPreview {
    pub target: String,
    pub create: usize,
    pub update: usize,
    pub delete: usize,
    pub unchanged: usize,
    pub failed: usize,
    /// Problems with the revision as a whole.
    pub errors: Vec<String>,
    /// Of those, what a reviewer must not miss (a refused prune): shown
    /// first, as GitHub's red caution block.
    pub cautions: Vec<String>,
    pub sections: Vec<Section>,
}

pub struct Section {
    /// One line: what and where (`~ apps/v1 Deployment ns/name (file:line)`).
    pub title: String,
    /// Lines of a diff, shown in a collapsible block.
    pub lines: Vec<String>,
}

impl TargetPreview {
    pub fn changes(&self) -> usize {
        self.create + self.update + self.delete
    }
}

/// The platform repo's comment: every target's plan for the PR head.
pub fn platform_comment(
    source: &str,
    pr: u64,
    sha: &str,
    previews: &[TargetPreview],
    how_to: &str,
) -> String {
    let failed: usize = previews.iter().map(|p| p.failed).sum();
    let changes: usize = previews.iter().map(|p| p.changes()).sum();
    let verdict = if failed > 0 {
        format!("❌ {failed} problem(s): this PR would not apply cleanly")
    } else if changes == 0 {
        "✅ no changes".to_string()
    } else {
        format!("✅ {changes} change(s), all accepted by a dry run")
    };
    let mut head = format!(
        "{}\n### ferry plan for `{source}` — PR #{pr} at `{}`\n\n{verdict}\n\n\
         | target | create | update | delete | unchanged | failed |\n|---|---:|---:|---:|---:|---:|\n",
        marker(source),
        short(sha)
    );
    for p in previews {
        head.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            p.target, p.create, p.update, p.delete, p.unchanged, p.failed
        ));
    }
    head.push('\n');
    for p in previews {
        for caution in &p.cautions {
            head.push_str(&format!(
                "> [!CAUTION]\n> **{}: merging this deletes what ferry keeps live, so ferry will refuse it.** {}\n\n",
                p.target,
                inline(caution)
            ));
        }
    }
    let mut blocks = Vec::new();
    for p in previews {
        for error in &p.errors {
            blocks.push(format!("- ❌ **{}**: {}\n", p.target, inline(error)));
        }
        for s in &p.sections {
            blocks.push(format!(
                "<details><summary><code>{}</code></summary>\n\n{}\n</details>\n",
                html(&s.title),
                fenced("diff", &s.lines.join("\n"))
            ));
        }
    }
    let footer = format!(
        "\n<sub>Planned by ferry with a server-side dry run; nothing was changed. {how_to}</sub>\n"
    );
    assemble(head, blocks, footer, "objects")
}

/// The DAGs repo's comment: what validation says about the PR head.
pub fn dags_comment(
    source: &str,
    pr: u64,
    sha: &str,
    files: usize,
    problems: &[Problem],
    hook: Option<&HookReport>,
    error: Option<&str>,
) -> String {
    let hook_failed = hook.is_some_and(|h| !h.success);
    let verdict = if let Some(error) = error {
        format!("❌ {}", inline(error))
    } else if problems.is_empty() && !hook_failed {
        format!("✅ {files} file(s) checked, no problems: this commit would be published")
    } else {
        format!(
            "❌ {} problem(s){}: this commit would not be published",
            problems.len(),
            if hook_failed {
                ", validation command failed"
            } else {
                ""
            }
        )
    };
    let mut head = format!(
        "{}\n### ferry DAG check for `{source}` — PR #{pr} at `{}`\n\n{verdict}\n\n",
        marker(source),
        short(sha)
    );
    let mut blocks = Vec::new();
    if !problems.is_empty() {
        head.push_str("| file | line | problem |\n|---|---:|---|\n");
        for p in problems {
            blocks.push(format!(
                "| `{}` | {} | {} |\n",
                p.file.replace('`', "'"),
                p.line.map(|l| l.to_string()).unwrap_or_default(),
                inline(&p.message)
            ));
        }
    }
    if let Some(h) = hook {
        blocks.push(format!(
            "\n<details><summary>validation command <code>{}</code>: {}</summary>\n\n{}\n</details>\n",
            html(&h.command.join(" ")),
            if h.success { "passed" } else if h.timed_out { "timed out" } else { "failed" },
            fenced("text", &h.output)
        ));
    }
    let footer = "\n<sub>Checked by ferry; nothing was published.</sub>\n".to_string();
    assemble(head, blocks, footer, "entries")
}

/// Appends blocks while they fit, then says how many were left out.
fn assemble(head: String, blocks: Vec<String>, footer: String, what: &str) -> String {
    let mut out = head;
    let budget = COMMENT_LIMIT - RESERVE - footer.len();
    let total = blocks.len();
    for (i, block) in blocks.into_iter().enumerate() {
        if out.len() + block.len() > budget {
            out.push_str(&format!(
                "\n**{} of {total} {what} not shown** (GitHub limits a comment to {COMMENT_LIMIT} characters); the status API and `ferry plan` show everything.\n",
                total - i
            ));
            break;
        }
        out.push_str(&block);
    }
    out.push_str(&footer);
    out
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// A fenced block that its content cannot close early.
fn fenced(lang: &str, text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    format!("{fence}{lang}\n{text}\n{fence}")
}

/// Text inside a table cell or list item: one line, no pipes breaking cells.
fn inline(text: &str) -> String {
    html(&text.split_whitespace().collect::<Vec<_>>().join(" ")).replace('|', "\\|")
}

fn html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preview(sections: usize, line: &str) -> TargetPreview {
        TargetPreview {
            cautions: Vec::new(),
            target: "kubernetes".into(),
            create: sections,
            update: 0,
            delete: 0,
            unchanged: 3,
            failed: 0,
            errors: vec![],
            sections: (0..sections)
                .map(|i| Section {
                    title: format!("+ v1 ConfigMap ns/cm-{i}"),
                    lines: vec![line.to_string()],
                })
                .collect(),
        }
    }

    #[test]
    fn a_huge_plan_is_cut_below_githubs_limit_and_says_so() {
        let body = platform_comment(
            "platform",
            7,
            &"a".repeat(40),
            &[preview(5000, &"x".repeat(100))],
            "",
        );
        assert!(body.len() <= COMMENT_LIMIT, "{}", body.len());
        assert!(body.starts_with(&marker("platform")));
        assert!(body.contains("| kubernetes | 5000 | 0 | 0 | 3 | 0 |"));
        let shown = body.matches("<details>").count();
        assert!(shown > 100 && shown < 5000, "{shown}");
        assert!(
            body.contains(&format!("**{} of 5000 objects not shown**", 5000 - shown)),
            "{body}"
        );
    }

    #[test]
    fn a_small_plan_is_whole_and_content_cannot_break_out() {
        let body = platform_comment(
            "platform",
            7,
            &"b".repeat(40),
            &[preview(2, "+ data: ```</details>")],
            "",
        );
        assert!(!body.contains("not shown"));
        assert_eq!(body.matches("<details>").count(), 2);
        assert!(body.contains("````diff\n+ data: ```</details>\n````"));
    }

    #[test]
    fn a_refused_prune_is_a_red_caution_above_the_details() {
        let refusal = "refused to prune: it would delete the Namespace(s) airflow and everything in them. If that is meant, say so with a line `Ferry-Allow-Prune: <why>`";
        let mut p = preview(1, "- data: x");
        p.failed = 1;
        p.errors = vec![format!("manifests: {refusal}")];
        p.cautions = vec![refusal.to_string()];
        let body = platform_comment("platform", 8, &"c".repeat(40), &[p], "");
        let caution = body.find("> [!CAUTION]\n> **kubernetes: merging this deletes what ferry keeps live, so ferry will refuse it.** refused to prune: it would delete the Namespace(s) airflow").expect(&body);
        assert!(caution < body.find("<details>").unwrap(), "{body}");
        assert!(body.contains("❌ 1 problem(s)"), "{body}");
        // Without a refusal there is no caution block.
        let body = platform_comment("platform", 8, &"c".repeat(40), &[preview(1, "+ a")], "");
        assert!(!body.contains("[!CAUTION]"), "{body}");
    }

    #[test]
    fn dag_problems_are_listed_with_file_and_line() {
        let problems = vec![Problem {
            file: "dags/bad.py".into(),
            line: Some(3),
            column: Some(1),
            document: None,
            message: "Expected ':', found newline | oops".into(),
        }];
        let body = dags_comment("dags", 4, &"c".repeat(40), 2, &problems, None, None);
        assert!(body.contains("❌ 1 problem(s)"));
        assert!(
            body.contains("| `dags/bad.py` | 3 | Expected ':', found newline \\| oops |"),
            "{body}"
        );
    }
}
