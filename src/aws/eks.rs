//! EKS: nodegroup scaling, labels, taints and versions; addons.
//! Plan reads DescribeNodegroup / DescribeAddon; apply calls
//! UpdateNodegroupConfig, UpdateNodegroupVersion (only with
//! `allow_upgrades`), CreateAddon / UpdateAddon, and follows each update
//! (DescribeUpdate) to its end.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;

use aws_sdk_eks::Client;
use aws_sdk_eks::types::{
    AddonStatus, NodegroupScalingConfig, ResolveConflicts, Taint as EksTaint, TaintEffect,
    UpdateLabelsPayload, UpdateStatus, UpdateTaintsPayload,
};

use super::{Action, AwsError, AwsPlan, Change, FieldChange, Limits, Op, code, describe, follow};
use crate::desired::platform::{Addon, ConflictMode, Eks, Nodegroup, Scaling, Taint};

#[derive(Debug, Clone)]
pub enum EksOp {
    NodegroupConfig {
        cluster: String,
        nodegroup: String,
        scaling: Option<Scaling>,
        add_labels: BTreeMap<String, String>,
        remove_labels: Vec<String>,
        add_taints: Vec<Taint>,
        remove_taints: Vec<Taint>,
    },
    NodegroupVersion {
        cluster: String,
        nodegroup: String,
        version: Option<String>,
        release_version: Option<String>,
    },
    CreateAddon {
        cluster: String,
        addon: Addon,
    },
    UpdateAddon {
        cluster: String,
        addon: Addon,
    },
}

pub async fn plan(client: &Client, eks: &Eks, plan: &mut AwsPlan) -> Result<(), AwsError> {
    let cluster = &eks.cluster.name;
    for ng in &eks.nodegroups {
        let resource = format!("eks/{cluster}/nodegroup/{}", ng.name);
        let live = client
            .describe_nodegroup()
            .cluster_name(cluster)
            .nodegroup_name(&ng.name)
            .send()
            .await;
        let live = match live {
            Ok(out) => out.nodegroup,
            Err(e) if code(&e).as_deref() == Some("ResourceNotFoundException") => {
                plan.errors.push(format!(
                    "{resource}: not found in AWS ({}); ferry does not create nodegroups: add it with Terraform first",
                    describe(&e)
                ));
                continue;
            }
            Err(e) => {
                return Err(AwsError::Api(format!(
                    "{resource}: DescribeNodegroup: {}",
                    describe(&e)
                )));
            }
        };
        let Some(live) = live else {
            return Err(AwsError::Api(format!(
                "{resource}: DescribeNodegroup returned no nodegroup"
            )));
        };
        plan_nodegroup(cluster, ng, &live, eks.allow_upgrades, &resource, plan);
    }
    for addon in &eks.addons {
        let resource = format!("eks/{cluster}/addon/{}", addon.name);
        let live = client
            .describe_addon()
            .cluster_name(cluster)
            .addon_name(&addon.name)
            .send()
            .await;
        match live {
            Ok(out) => {
                let live = out.addon;
                let version = live.as_ref().and_then(|a| a.addon_version()).unwrap_or("");
                let config = live
                    .as_ref()
                    .and_then(|a| a.configuration_values())
                    .unwrap_or("");
                let mut fields = Vec::new();
                if let Some(want) = &addon.version
                    && want != version
                {
                    fields.push(field("version", version, want));
                }
                let live_config: Option<serde_json::Value> = serde_json::from_str(config).ok();
                if let Some(want) = &addon.configuration
                    && live_config.as_ref() != Some(want)
                {
                    fields.push(field("configuration", config, &want.to_string()));
                }
                let live_role = live
                    .as_ref()
                    .and_then(|a| a.service_account_role_arn())
                    .unwrap_or("");
                if let Some(want) = &addon.service_account_role_arn
                    && want != live_role
                {
                    fields.push(field("service_account_role_arn", live_role, want));
                }
                plan.update(
                    resource,
                    fields,
                    Op::Eks(EksOp::UpdateAddon {
                        cluster: cluster.clone(),
                        addon: addon.clone(),
                    }),
                );
            }
            Err(e) if code(&e).as_deref() == Some("ResourceNotFoundException") => {
                let mut fields = vec![field(
                    "version",
                    "",
                    addon.version.as_deref().unwrap_or("(EKS default)"),
                )];
                if let Some(c) = &addon.configuration {
                    fields.push(field("configuration", "", &c.to_string()));
                }
                if let Some(role) = &addon.service_account_role_arn {
                    fields.push(field("service_account_role_arn", "", role));
                }
                plan.changes.push(Change {
                    resource,
                    action: Action::Create,
                    fields,
                    op: Op::Eks(EksOp::CreateAddon {
                        cluster: cluster.clone(),
                        addon: addon.clone(),
                    }),
                });
            }
            Err(e) => {
                return Err(AwsError::Api(format!(
                    "{resource}: DescribeAddon: {}",
                    describe(&e)
                )));
            }
        }
    }
    Ok(())
}

fn field(name: &str, before: &str, after: &str) -> FieldChange {
    FieldChange {
        field: name.to_string(),
        before: before.to_string(),
        after: after.to_string(),
    }
}

fn plan_nodegroup(
    cluster: &str,
    ng: &Nodegroup,
    live: &aws_sdk_eks::types::Nodegroup,
    allow_upgrades: bool,
    resource: &str,
    plan: &mut AwsPlan,
) {
    let mut fields = Vec::new();
    let live_scaling = live.scaling_config();
    let live_tuple = live_scaling.map(|s| {
        (
            s.min_size().unwrap_or_default(),
            s.max_size().unwrap_or_default(),
            s.desired_size().unwrap_or_default(),
        )
    });
    let want = ng.scaling;
    let (live_min, live_max, live_desired) = live_tuple.unwrap_or_default();
    // Without a desired size of git's, the autoscaler's stands, unless new
    // bounds leave it outside them (EKS would refuse them with it).
    let desired = want.desired.or_else(|| {
        (!(want.min..=want.max).contains(&live_desired))
            .then_some(live_desired.clamp(want.min, want.max))
    });
    let scaling = (live_tuple.is_none()
        || (live_min, live_max) != (want.min, want.max)
        || desired.is_some_and(|d| d != live_desired))
    .then_some(Scaling { desired, ..want });
    if let Some(s) = scaling {
        let shown = |d: Option<i32>| d.map_or("(the autoscaler's)".to_string(), |d| d.to_string());
        fields.push(field(
            "scaling",
            &format!("min {live_min}, max {live_max}, desired {live_desired}"),
            &format!("min {}, max {}, desired {}", s.min, s.max, shown(s.desired)),
        ));
    }
    let live_labels: BTreeMap<String, String> = live
        .labels()
        .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let (mut add_labels, mut remove_labels) = (BTreeMap::new(), Vec::new());
    if let Some(want) = &ng.labels {
        for (k, v) in want {
            if live_labels.get(k) != Some(v) {
                add_labels.insert(k.clone(), v.clone());
                fields.push(field(
                    &format!("labels.{k}"),
                    live_labels.get(k).map(String::as_str).unwrap_or(""),
                    v,
                ));
            }
        }
        for k in live_labels.keys().filter(|k| !want.contains_key(*k)) {
            remove_labels.push(k.clone());
            fields.push(field(&format!("labels.{k}"), &live_labels[k], ""));
        }
    }
    let live_taints: BTreeSet<Taint> = live
        .taints()
        .iter()
        .map(|t| Taint {
            key: t.key().unwrap_or_default().to_string(),
            value: t.value().unwrap_or_default().to_string(),
            effect: t
                .effect()
                .map(|e| e.as_str().to_string())
                .unwrap_or_default(),
        })
        .collect();
    let (mut add_taints, mut remove_taints) = (Vec::new(), Vec::new());
    if let Some(want) = &ng.taints {
        let want: BTreeSet<Taint> = want.iter().cloned().collect();
        for t in want.difference(&live_taints) {
            add_taints.push(t.clone());
            fields.push(field(
                "taints",
                "",
                &format!("{}={}:{}", t.key, t.value, t.effect),
            ));
        }
        for t in live_taints.difference(&want) {
            // A taint with the same key and effect is replaced by the add.
            if !want.iter().any(|w| w.key == t.key && w.effect == t.effect) {
                remove_taints.push(t.clone());
            }
            fields.push(field(
                "taints",
                &format!("{}={}:{}", t.key, t.value, t.effect),
                "",
            ));
        }
    }
    if let Some(types) = &ng.instance_types {
        let live_types = live.instance_types();
        if types.as_slice() != live_types {
            plan.drift.push(format!(
                "{resource}: instance types are {live_types:?} in AWS, {types:?} in git; they cannot change in place (replace the nodegroup with Terraform)"
            ));
        }
    }
    let config_changed = !fields.is_empty();
    if config_changed {
        plan.changes.push(Change {
            resource: resource.to_string(),
            action: Action::Update,
            fields,
            op: Op::Eks(EksOp::NodegroupConfig {
                cluster: cluster.to_string(),
                nodegroup: ng.name.clone(),
                scaling,
                add_labels,
                remove_labels,
                add_taints,
                remove_taints,
            }),
        });
    }
    let version = ng
        .version
        .clone()
        .filter(|v| Some(v.as_str()) != live.version());
    let release_version = ng
        .release_version
        .clone()
        .filter(|v| Some(v.as_str()) != live.release_version());
    if version.is_some() || release_version.is_some() {
        let mut fields = Vec::new();
        if let Some(v) = &version {
            fields.push(field("version", live.version().unwrap_or(""), v));
        }
        if let Some(v) = &release_version {
            fields.push(field(
                "release_version",
                live.release_version().unwrap_or(""),
                v,
            ));
        }
        if allow_upgrades {
            plan.changes.push(Change {
                resource: resource.to_string(),
                action: Action::Update,
                fields,
                op: Op::Eks(EksOp::NodegroupVersion {
                    cluster: cluster.to_string(),
                    nodegroup: ng.name.clone(),
                    version,
                    release_version,
                }),
            });
        } else {
            plan.drift.push(format!(
                "{resource}: version differs ({}); set eks.allow_upgrades: true to let ferry upgrade it",
                fields
                    .iter()
                    .map(|f| format!("{} {} -> {}", f.field, f.before, f.after))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    } else if !config_changed {
        plan.unchanged += 1;
    }
}

fn eks_taint(t: &Taint) -> EksTaint {
    EksTaint::builder()
        .key(&t.key)
        .value(&t.value)
        .effect(TaintEffect::from(t.effect.as_str()))
        .build()
}

pub async fn apply(
    client: &Client,
    op: &EksOp,
    limits: &Limits,
    cancel: &AtomicBool,
) -> Result<(), String> {
    match op {
        EksOp::NodegroupConfig {
            cluster,
            nodegroup,
            scaling,
            add_labels,
            remove_labels,
            add_taints,
            remove_taints,
        } => {
            let mut call = client
                .update_nodegroup_config()
                .cluster_name(cluster)
                .nodegroup_name(nodegroup);
            if let Some(s) = scaling {
                call = call.scaling_config(
                    NodegroupScalingConfig::builder()
                        .min_size(s.min)
                        .max_size(s.max)
                        .set_desired_size(s.desired)
                        .build(),
                );
            }
            if !add_labels.is_empty() || !remove_labels.is_empty() {
                let mut labels = UpdateLabelsPayload::builder();
                for (k, v) in add_labels {
                    labels = labels.add_or_update_labels(k, v);
                }
                for k in remove_labels {
                    labels = labels.remove_labels(k);
                }
                call = call.labels(labels.build());
            }
            if !add_taints.is_empty() || !remove_taints.is_empty() {
                let mut taints = UpdateTaintsPayload::builder();
                for t in add_taints {
                    taints = taints.add_or_update_taints(eks_taint(t));
                }
                for t in remove_taints {
                    taints = taints.remove_taints(eks_taint(t));
                }
                call = call.taints(taints.build());
            }
            let update = call
                .send()
                .await
                .map_err(|e| format!("UpdateNodegroupConfig: {}", describe(&e)))?
                .update;
            follow_nodegroup(client, cluster, nodegroup, update, limits, cancel).await
        }
        EksOp::NodegroupVersion {
            cluster,
            nodegroup,
            version,
            release_version,
        } => {
            let update = client
                .update_nodegroup_version()
                .cluster_name(cluster)
                .nodegroup_name(nodegroup)
                .set_version(version.clone())
                .set_release_version(release_version.clone())
                .send()
                .await
                .map_err(|e| format!("UpdateNodegroupVersion: {}", describe(&e)))?
                .update;
            follow_nodegroup(client, cluster, nodegroup, update, limits, cancel).await
        }
        EksOp::CreateAddon { cluster, addon } => {
            client
                .create_addon()
                .cluster_name(cluster)
                .addon_name(&addon.name)
                .set_addon_version(addon.version.clone())
                .set_configuration_values(addon.configuration.as_ref().map(|c| c.to_string()))
                .set_service_account_role_arn(addon.service_account_role_arn.clone())
                .resolve_conflicts(conflicts(addon.resolve_conflicts.on_create))
                .send()
                .await
                .map_err(|e| format!("CreateAddon: {}", describe(&e)))?;
            follow(&format!("addon {}", addon.name), limits, cancel, || async {
                let out = client
                    .describe_addon()
                    .cluster_name(cluster)
                    .addon_name(&addon.name)
                    .send()
                    .await
                    .map_err(|e| format!("DescribeAddon: {}", describe(&e)))?;
                match out.addon.as_ref().and_then(|a| a.status()) {
                    Some(AddonStatus::Active) => Ok(Some(())),
                    Some(s @ (AddonStatus::CreateFailed | AddonStatus::Degraded)) => {
                        let issues: Vec<String> = out
                            .addon
                            .as_ref()
                            .and_then(|a| a.health())
                            .map(|h| {
                                h.issues()
                                    .iter()
                                    .filter_map(|i| i.message().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default();
                        let conflict = out
                            .addon
                            .as_ref()
                            .and_then(|a| a.health())
                            .is_some_and(|h| {
                                h.issues().iter().any(|i| {
                                    i.code().is_some_and(|c| c.as_str() == "ConfigurationConflict")
                                })
                            });
                        let hint = if conflict {
                            format!(
                                " (the cluster runs {} self-managed already: set `resolve_conflicts: {{on_create: overwrite}}` on the addon in platform.yaml to let EKS take its objects over, then delete the failed addon with `aws eks delete-addon --preserve`)",
                                addon.name
                            )
                        } else {
                            String::new()
                        };
                        Err(format!(
                            "addon is {}: {}{hint}",
                            s.as_str(),
                            issues.join("; ")
                        ))
                    }
                    _ => Ok(None),
                }
            })
            .await
        }
        EksOp::UpdateAddon { cluster, addon } => {
            let update = client
                .update_addon()
                .cluster_name(cluster)
                .addon_name(&addon.name)
                .set_addon_version(addon.version.clone())
                .set_configuration_values(addon.configuration.as_ref().map(|c| c.to_string()))
                .set_service_account_role_arn(addon.service_account_role_arn.clone())
                .resolve_conflicts(conflicts(addon.resolve_conflicts.on_update))
                .send()
                .await
                .map_err(|e| format!("UpdateAddon: {}", describe(&e)))?
                .update;
            follow_update(
                client,
                cluster,
                None,
                Some(&addon.name),
                update,
                limits,
                cancel,
            )
            .await
        }
    }
}

fn conflicts(mode: ConflictMode) -> ResolveConflicts {
    match mode {
        ConflictMode::None => ResolveConflicts::None,
        ConflictMode::Overwrite => ResolveConflicts::Overwrite,
        ConflictMode::Preserve => ResolveConflicts::Preserve,
    }
}

async fn follow_nodegroup(
    client: &Client,
    cluster: &str,
    nodegroup: &str,
    update: Option<aws_sdk_eks::types::Update>,
    limits: &Limits,
    cancel: &AtomicBool,
) -> Result<(), String> {
    follow_update(
        client,
        cluster,
        Some(nodegroup),
        None,
        update,
        limits,
        cancel,
    )
    .await
}

async fn follow_update(
    client: &Client,
    cluster: &str,
    nodegroup: Option<&str>,
    addon: Option<&str>,
    update: Option<aws_sdk_eks::types::Update>,
    limits: &Limits,
    cancel: &AtomicBool,
) -> Result<(), String> {
    let Some(id) = update.as_ref().and_then(|u| u.id()).map(str::to_string) else {
        return Err("EKS returned no update id".into());
    };
    follow(&format!("EKS update {id}"), limits, cancel, || async {
        let out = client
            .describe_update()
            .name(cluster)
            .update_id(&id)
            .set_nodegroup_name(nodegroup.map(str::to_string))
            .set_addon_name(addon.map(str::to_string))
            .send()
            .await
            .map_err(|e| format!("DescribeUpdate: {}", describe(&e)))?;
        let Some(update) = out.update else {
            return Ok(None);
        };
        match update.status() {
            Some(UpdateStatus::Successful) => Ok(Some(())),
            Some(s @ (UpdateStatus::Failed | UpdateStatus::Cancelled)) => {
                let errors: Vec<String> = update
                    .errors()
                    .iter()
                    .filter_map(|e| e.error_message().map(str::to_string))
                    .collect();
                Err(format!(
                    "EKS update {id} {}: {}",
                    s.as_str(),
                    errors.join("; ")
                ))
            }
            _ => Ok(None),
        }
    })
    .await
}
