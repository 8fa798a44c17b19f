//! The PR preview comment, rendered from target-neutral previews so every
//! effector (Kubernetes now, AWS next) shows up the same way: a summary
//! table first, then one collapsible section per changed object, cut to
//! GitHub's comment limit with a line saying what was cut.

use crate::dags::validate::{HookReport, Problem};
use crate::kubernetes::diff::Op;
use crate::kubernetes::plan::{Action, Plan};

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
    pub sections: Vec<Section>,
}

pub struct Section {
    /// One line: what and where (`~ apps/v1 Deployment ns/name (file:line)`).
    pub title: String,
    /// Lines of a diff, shown in a collapsible block.
    pub lines: Vec<String>,
}

impl TargetPreview {
    pub fn from_kube_plan(plan: &Plan) -> TargetPreview {
        let mut sections = Vec::new();
        // Failures first: they are what a reviewer must see.
        let mut objects: Vec<_> = plan.objects.iter().collect();
        objects.sort_by_key(|o| o.error.is_none());
        for object in objects {
            let mark = match object.mark() {
                None => continue,
                Some('!') => "❌".to_string(),
                Some(m) => m.to_string(),
            };
            let mut lines = Vec::new();
            if let Some(error) = &object.error {
                lines.push(format!("! {error}"));
            }
            if let Some(note) = &object.note {
                lines.push(format!("# {note}"));
            }
            for change in &object.changes {
                let show = |v: &Option<serde_json::Value>| {
                    v.as_ref().map(|v| v.to_string()).unwrap_or_default()
                };
                lines.push(match change.op {
                    Op::Added => format!("+ {}: {}", change.path, show(&change.after)),
                    Op::Removed => format!("- {}: {}", change.path, show(&change.before)),
                    Op::Changed => format!(
                        "- {}: {}\n+ {}: {}",
                        change.path,
                        show(&change.before),
                        change.path,
                        show(&change.after)
                    ),
                });
            }
            if object.action == Action::Prune && lines.is_empty() {
                lines.push("- (deleted: no longer in the revision)".into());
            }
            sections.push(Section {
                title: format!("{mark} {}", object.title()),
                lines,
            });
        }
        TargetPreview {
            target: plan.target.clone(),
            create: plan.count(Action::Create),
            update: plan.count(Action::Update),
            delete: plan.count(Action::Prune),
            unchanged: plan.count(Action::Unchanged),
            failed: plan.failed(),
            errors: plan.errors.iter().map(|e| e.to_string()).collect(),
            sections,
        }
    }

    #[cfg(feature = "aws")]
    pub fn from_aws_plan(plan: &crate::aws::AwsPlan) -> TargetPreview {
        use crate::aws::Action as AwsAction;
        let count = |a: AwsAction| plan.changes.iter().filter(|c| c.action == a).count();
        let mut sections: Vec<Section> = plan
            .changes
            .iter()
            .map(|c| Section {
                title: format!(
                    "{} {}",
                    match c.action {
                        AwsAction::Create => "+",
                        AwsAction::Update => "~",
                        AwsAction::Delete => "-",
                    },
                    c.resource
                ),
                lines: c
                    .fields
                    .iter()
                    .flat_map(|f| {
                        let mut lines = Vec::new();
                        if !f.before.is_empty() {
                            lines.push(format!("- {}: {}", f.field, f.before));
                        }
                        if !f.after.is_empty() {
                            lines.push(format!("+ {}: {}", f.field, f.after));
                        }
                        lines
                    })
                    .collect(),
            })
            .collect();
        for drift in &plan.drift {
            sections.push(Section {
                title: format!(
                    "≠ not applied: {}",
                    drift.split(": ").next().unwrap_or(drift)
                ),
                lines: vec![format!("# {drift}")],
            });
        }
        TargetPreview {
            target: "aws".into(),
            create: count(AwsAction::Create),
            update: count(AwsAction::Update),
            delete: count(AwsAction::Delete),
            unchanged: plan.unchanged,
            failed: plan.errors.len(),
            errors: plan.errors.clone(),
            sections,
        }
    }

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
    fn dag_problems_are_listed_with_file_and_line() {
        let problems = vec![Problem {
            file: "dags/bad.py".into(),
            line: Some(3),
            column: Some(1),
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
