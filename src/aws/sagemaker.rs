//! SageMaker endpoints. Models and endpoint configs are immutable, so ferry
//! names them by a hash of their spec (`<endpoint>-<hash8>`): a new image or
//! model artifact is a new model and config, deployed with CreateEndpoint or
//! UpdateEndpoint and followed to `InService`. A weight-, count- or
//! tag-only change keeps the config (UpdateEndpointWeightsAndCapacities,
//! AddTags/DeleteTags). On
//! failure SageMaker keeps the previous config serving and ferry reports the
//! `FailureReason`; only after success are ferry's unreferenced models and
//! configs (tagged `ferry.dev/managed=true`) deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;

use aws_sdk_sagemaker::Client;
use aws_sdk_sagemaker::types::{
    CaptureMode, CaptureOption, ContainerDefinition, DataCaptureConfig, DesiredWeightAndCapacity,
    EndpointStatus, ProductionVariant, ProductionVariantInstanceType, Tag, VariantProperty,
    VariantPropertyType,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::scaling::{self, LiveScaling, ScalingOp};
use super::{
    Action, AwsError, AwsPlan, Change, FieldChange, Limits, Op, Provenance, SageMakerClients,
    describe,
};
use crate::desired::platform::{Endpoint, SmokeTest, reserved_tag_key};

pub const MANAGED_TAG: &str = "ferry.dev/managed";

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    pub registered_model: String,
    pub image: String,
    pub model_data: String,
    pub role: String,
}

#[derive(Debug, Clone)]
pub enum SageMakerOp {
    Deploy {
        // Boxed: an endpoint with its smoke payload dwarfs every other op.
        endpoint: Box<Endpoint>,
        models: Vec<ModelSpec>,
        /// Variant name -> model resource name.
        variant_models: BTreeMap<String, String>,
        config_name: String,
        create: bool,
        /// With `create`: a live endpoint that serves nothing (Failed, or
        /// Deleting) is deleted and waited out first.
        replace: bool,
        /// Tag edits on the live endpoint (empty when creating it).
        tags: TagSync,
        /// Autoscaled variants whose instance type changes or that go:
        /// SageMaker refuses the update until they are deregistered.
        unscale_first: Vec<String>,
        /// Some variant stays autoscaled through the update: keep the
        /// instance counts the autoscaler chose (weights come from git).
        retain_counts: bool,
    },
    /// Same config: new weights or counts, new tags, or both.
    Update {
        endpoint: String,
        arn: String,
        /// (variant, weight, count); `None` when they already match. The
        /// count is `None` for an autoscaled variant: the autoscaler's.
        weights: Option<Vec<(String, f32, Option<i32>)>>,
        tags: TagSync,
    },
    Delete {
        endpoint: String,
    },
}

/// Tag edits for a live endpoint. git owns an endpoint's tags except AWS's
/// reserved `aws:` keys and ferry's own `ferry.dev/` provenance. Keys git no
/// longer declares are removed only from endpoints ferry created: an endpoint
/// ferry adopted keeps the tags others gave it, since ferry cannot tell those
/// from ones git once declared.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TagSync {
    pub set: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

impl TagSync {
    pub fn between(declared: &BTreeMap<String, String>, live: &BTreeMap<String, String>) -> Self {
        let set = declared
            .iter()
            .filter(|(k, v)| live.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let created_by_ferry = live.get(MANAGED_TAG).map(String::as_str) == Some("true");
        let remove = if created_by_ferry {
            live.keys()
                .filter(|k| !reserved_tag_key(k) && !declared.contains_key(*k))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        TagSync { set, remove }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    fn fields(&self, live: &BTreeMap<String, String>) -> impl Iterator<Item = FieldChange> + '_ {
        let before = |k: &str| live.get(k).cloned().unwrap_or_default();
        let set: Vec<FieldChange> = self
            .set
            .iter()
            .map(|(k, v)| field(&format!("tags.{k}"), &before(k), v))
            .collect();
        let removed: Vec<FieldChange> = self
            .remove
            .iter()
            .map(|k| field(&format!("tags.{k}"), &before(k), ""))
            .collect();
        set.into_iter().chain(removed)
    }
}

fn hash8(value: &impl Serialize) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    Sha256::digest(&bytes)[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The names ferry gives an endpoint's models and config, from their specs.
pub fn names(endpoint: &Endpoint) -> (Vec<ModelSpec>, BTreeMap<String, String>, String) {
    let mut models: Vec<ModelSpec> = Vec::new();
    let mut variant_models = BTreeMap::new();
    for v in &endpoint.variants {
        let spec = (
            &v.model_name,
            &v.image,
            &v.model_data,
            &endpoint.execution_role_arn,
        );
        let name = format!("{}-{}", endpoint.name, hash8(&spec));
        variant_models.insert(v.name.clone(), name.clone());
        if !models.iter().any(|m| m.name == name) {
            models.push(ModelSpec {
                name,
                registered_model: v.model_name.clone(),
                image: v.image.clone(),
                model_data: v.model_data.clone(),
                role: endpoint.execution_role_arn.clone(),
            });
        }
    }
    // Weights and counts are left out: changing them keeps the config.
    let config_spec: Vec<(&String, &String, &String)> = endpoint
        .variants
        .iter()
        .map(|v| (&v.name, &variant_models[&v.name], &v.instance_type))
        .collect();
    let config = format!(
        "{}-{}",
        endpoint.name,
        hash8(&(config_spec, &endpoint.data_capture))
    );
    (models, variant_models, config)
}

/// `<endpoint>-<8 hex>`: one of ferry's names for this endpoint.
fn is_ferry_name(endpoint: &str, name: &str) -> bool {
    name.strip_prefix(endpoint)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|h| h.len() == 8 && h.chars().all(|c| c.is_ascii_hexdigit()))
}

fn not_found(code: Option<&str>, message: &str) -> bool {
    code == Some("ValidationException") && message.contains("Could not find")
}

fn field(name: &str, before: &str, after: &str) -> FieldChange {
    FieldChange {
        field: name.to_string(),
        before: before.to_string(),
        after: after.to_string(),
    }
}

/// A new endpoint for `endpoint`; `replacing` is the status of a live one
/// that serves nothing (a failed creation), deleted first.
fn create_change(
    resource: String,
    endpoint: &Endpoint,
    models: Vec<ModelSpec>,
    variant_models: BTreeMap<String, String>,
    config_name: String,
    replacing: Option<String>,
) -> Change {
    let mut fields: Vec<FieldChange> = replacing
        .iter()
        .map(|was| field("status", was, "InService"))
        .collect();
    fields.extend(endpoint.variants.iter().map(|v| {
        field(
            &format!("variants.{}", v.name),
            "",
            &format!(
                "{} ({}, {}) on {} x{} weight {}",
                v.model_name,
                v.image,
                v.model_data,
                v.instance_type,
                v.initial_instance_count,
                v.weight
            ),
        )
    }));
    fields.push(field("endpoint_config", "", &config_name));
    Change {
        resource,
        action: Action::Create,
        fields,
        op: Op::SageMaker(SageMakerOp::Deploy {
            endpoint: Box::new(endpoint.clone()),
            models,
            variant_models,
            config_name,
            create: true,
            replace: replacing.is_some(),
            tags: TagSync::default(),
            unscale_first: Vec::new(),
            retain_counts: false,
        }),
    }
}

pub async fn plan(
    clients: &SageMakerClients,
    declared: &[Endpoint],
    provenance: &Provenance,
    prune: bool,
    plan: &mut AwsPlan,
) -> Result<(), AwsError> {
    let client = &clients.control;
    for endpoint in declared {
        let resource = format!("sagemaker/endpoint/{}", endpoint.name);
        let (models, variant_models, config_name) = names(endpoint);
        let live = client
            .describe_endpoint()
            .endpoint_name(&endpoint.name)
            .send()
            .await;
        let live = match live {
            Ok(out) => out,
            Err(e) => {
                let text = describe(&e);
                if not_found(super::code(&e).as_deref(), &text) {
                    plan.changes.push(create_change(
                        resource,
                        endpoint,
                        models,
                        variant_models,
                        config_name,
                        None,
                    ));
                    plan_scaling(endpoint, &BTreeMap::new(), &[], plan);
                    continue;
                }
                return Err(AwsError::Api(format!(
                    "{resource}: DescribeEndpoint: {text}"
                )));
            }
        };
        // A creation that failed leaves an endpoint serving nothing, which
        // SageMaker will not update; one being deleted is on its way out.
        // Either way: (wait for it to go and) create it again.
        if let Some(status @ (EndpointStatus::Failed | EndpointStatus::Deleting)) =
            live.endpoint_status()
        {
            let was = match live.failure_reason() {
                Some(reason) => format!("{} ({reason})", status.as_str()),
                None => status.as_str().to_string(),
            };
            plan.changes.push(create_change(
                resource,
                endpoint,
                models,
                variant_models,
                config_name,
                Some(was),
            ));
            plan_scaling(endpoint, &BTreeMap::new(), &[], plan);
            continue;
        }
        let arn = live.endpoint_arn().unwrap_or_default().to_string();
        let live_tags = tags_of(client, &arn).await?;
        let tags = TagSync::between(&endpoint.tags, &live_tags);
        let live_config = live.endpoint_config_name().unwrap_or_default().to_string();
        let variant_names: BTreeSet<&str> = endpoint
            .variants
            .iter()
            .map(|v| v.name.as_str())
            .chain(
                live.production_variants()
                    .iter()
                    .filter_map(|v| v.variant_name()),
            )
            .collect();
        let live_scaling = scaling::live(
            &clients.scaling,
            &endpoint.name,
            &variant_names.into_iter().collect::<Vec<_>>(),
        )
        .await?;
        // Whose the instance count is: the autoscaler's while git declares
        // autoscaling or someone else's target is on the variant; ferry's
        // again in the plan that removes ferry's own target.
        let autoscaled = |variant: &str| {
            endpoint.autoscales(variant) || live_scaling.get(variant).is_some_and(|l| !l.ours())
        };
        // Our config already deploying (started by a ferry that was killed
        // or restarted mid-way): not a change, but not done either; the
        // Deploy op follows it without starting another. Another config:
        // a deployment of ours.
        let fields = match live.endpoint_status().filter(|s| transitional(s)) {
            Some(status) if live_config == config_name || deploying_to(&live, &config_name) => {
                Some(vec![field("status", status.as_str(), "InService")])
            }
            _ if live_config != config_name => {
                let mut fields = vec![field("endpoint_config", &live_config, &config_name)];
                fields.extend(variant_changes(client, &live_config, endpoint).await);
                fields.extend(tags.fields(&live_tags));
                Some(fields)
            }
            _ => None,
        };
        if let Some(fields) = fields {
            // SageMaker lets a model change under autoscaling, not a new
            // instance type or a removed variant. Only ferry's targets, and
            // those git declares (set again after), are taken off: someone
            // else's stays, and SageMaker's refusal says why.
            let unscale_first: Vec<String> = live_scaling
                .iter()
                .filter(|(v, now)| now.ours() || endpoint.autoscales(v))
                .map(|(v, _)| v)
                .filter(|v| {
                    fields.iter().any(|f| {
                        f.field == format!("variants.{v}.instance_type")
                            || (f.field == format!("variants.{v}") && f.after.is_empty())
                    })
                })
                .cloned()
                .collect();
            let retain_counts = live_scaling
                .keys()
                .any(|v| !unscale_first.contains(v) && autoscaled(v));
            plan.changes.push(Change {
                resource,
                action: Action::Update,
                fields,
                op: Op::SageMaker(SageMakerOp::Deploy {
                    endpoint: Box::new(endpoint.clone()),
                    models,
                    variant_models,
                    config_name,
                    create: false,
                    replace: false,
                    tags,
                    unscale_first: unscale_first.clone(),
                    retain_counts,
                }),
            });
            plan_scaling(endpoint, &live_scaling, &unscale_first, plan);
            continue;
        }
        let live_variants: BTreeMap<String, (Option<f32>, Option<i32>)> = live
            .production_variants()
            .iter()
            .filter_map(|v| {
                Some((
                    v.variant_name()?.to_string(),
                    (
                        v.desired_weight().or(v.current_weight()),
                        v.desired_instance_count().or(v.current_instance_count()),
                    ),
                ))
            })
            .collect();
        let mut fields = Vec::new();
        for v in &endpoint.variants {
            let (weight, count) = live_variants.get(&v.name).copied().unwrap_or((None, None));
            if weight.is_some_and(|w| (w - v.weight).abs() > 1e-6) {
                fields.push(field(
                    &format!("variants.{}.weight", v.name),
                    &fmt_opt(weight),
                    &v.weight.to_string(),
                ));
            }
            if !autoscaled(&v.name) && count.is_some_and(|c| c != v.initial_instance_count) {
                fields.push(field(
                    &format!("variants.{}.instance_count", v.name),
                    &fmt_opt(count),
                    &v.initial_instance_count.to_string(),
                ));
            }
        }
        let weights = (!fields.is_empty()).then(|| {
            endpoint
                .variants
                .iter()
                .map(|v| {
                    let count = (!autoscaled(&v.name)).then_some(v.initial_instance_count);
                    (v.name.clone(), v.weight, count)
                })
                .collect()
        });
        fields.extend(tags.fields(&live_tags));
        plan.update(
            resource,
            fields,
            Op::SageMaker(SageMakerOp::Update {
                endpoint: endpoint.name.clone(),
                arn,
                weights,
                tags,
            }),
        );
        plan_scaling(endpoint, &live_scaling, &[], plan);
    }
    // Endpoints ferry made for this source that git no longer declares.
    let declared_names: BTreeSet<&str> = declared.iter().map(|e| e.name.as_str()).collect();
    for name in list_endpoints(client).await? {
        if declared_names.contains(name.as_str())
            || !owned_by(
                client,
                &endpoint_arn_of(client, &name).await?,
                &provenance.source,
            )
            .await?
        {
            continue;
        }
        let resource = format!("sagemaker/endpoint/{name}");
        if prune {
            // Application Auto Scaling keeps a target after its endpoint
            // is gone: ferry's go first.
            let live = describe_endpoint(client, &name)
                .await
                .map_err(|e| AwsError::Api(format!("{resource}: {e}")))?;
            let variants: Vec<&str> = live
                .production_variants()
                .iter()
                .filter_map(|v| v.variant_name())
                .collect();
            for (variant, now) in scaling::live(&clients.scaling, &name, &variants).await? {
                if now.ours() {
                    plan.changes.push(scaling_removal(&name, &variant, &now));
                }
            }
            plan.changes.push(Change {
                resource,
                action: Action::Delete,
                fields: vec![field("endpoint", &name, "")],
                op: Op::SageMaker(SageMakerOp::Delete { endpoint: name }),
            });
        } else {
            plan.drift.push(format!(
                "{resource}: no longer declared; set targets.aws.prune: true to let ferry delete it"
            ));
        }
    }
    Ok(())
}

/// The autoscaling changes of `endpoint`'s variants, after the endpoint's
/// own change (a new endpoint's variants exist only once it does).
/// `unscaled`: variants the endpoint's deploy deregisters first.
fn plan_scaling(
    endpoint: &Endpoint,
    live: &BTreeMap<String, LiveScaling>,
    unscaled: &[String],
    plan: &mut AwsPlan,
) {
    let resource = |v: &str| scaling_resource(&endpoint.name, v);
    let live_of = |v: &str| live.get(v).filter(|_| !unscaled.iter().any(|u| u == v));
    for v in &endpoint.variants {
        let Some(spec) = &v.autoscaling else {
            continue;
        };
        let now = live_of(&v.name);
        let fields = scaling::fields(spec, now);
        if fields.is_empty() {
            plan.unchanged += 1;
            continue;
        }
        plan.changes.push(Change {
            resource: resource(&v.name),
            action: if now.is_some() {
                Action::Update
            } else {
                Action::Create
            },
            fields,
            op: Op::Scaling(ScalingOp::Set {
                endpoint: endpoint.name.clone(),
                variant: v.name.clone(),
                spec: spec.clone(),
            }),
        });
    }
    for (name, now) in live {
        if endpoint.autoscales(name) || unscaled.contains(name) {
            continue;
        }
        if now.ours() {
            plan.changes
                .push(scaling_removal(&endpoint.name, name, now));
        } else {
            plan.drift.push(format!(
                "{}: autoscaled ({}..{} instances) by something other than ferry; ferry leaves its instance count to that autoscaler. Declare `autoscaling` on the variant to own it",
                resource(name),
                now.min,
                now.max
            ));
        }
    }
}

/// Removing ferry's target and policy from a variant.
fn scaling_removal(endpoint: &str, variant: &str, now: &LiveScaling) -> Change {
    Change {
        resource: scaling_resource(endpoint, variant),
        action: Action::Delete,
        fields: scaling::removed_fields(now),
        op: Op::Scaling(ScalingOp::Remove {
            endpoint: endpoint.to_string(),
            variant: variant.to_string(),
        }),
    }
}

fn scaling_resource(endpoint: &str, variant: &str) -> String {
    format!("sagemaker/endpoint/{endpoint}/variant/{variant}/autoscaling")
}

fn fmt_opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// What the new config changes per variant (image, model data, instance
/// type), read from the live config and its models; best effort.
async fn variant_changes(
    client: &Client,
    live_config: &str,
    endpoint: &Endpoint,
) -> Vec<FieldChange> {
    let mut live: BTreeMap<String, (String, String, String)> = BTreeMap::new();
    if let Ok(config) = client
        .describe_endpoint_config()
        .endpoint_config_name(live_config)
        .send()
        .await
    {
        for v in config.production_variants() {
            let (Some(name), Some(model)) = (v.variant_name(), v.model_name()) else {
                continue;
            };
            let (image, data) = match client.describe_model().model_name(model).send().await {
                Ok(m) => {
                    let c = m.primary_container();
                    (
                        c.and_then(|c| c.image()).unwrap_or_default().to_string(),
                        c.and_then(|c| c.model_data_url())
                            .unwrap_or_default()
                            .to_string(),
                    )
                }
                Err(_) => (String::new(), String::new()),
            };
            let instance = v
                .instance_type()
                .map(|t| t.as_str().to_string())
                .unwrap_or_default();
            live.insert(name.to_string(), (image, data, instance));
        }
    }
    let mut fields = Vec::new();
    for v in &endpoint.variants {
        let (image, data, instance) = live.remove(&v.name).unwrap_or_default();
        for (what, before, after) in [
            ("image", image, &v.image),
            ("model_data", data, &v.model_data),
            ("instance_type", instance, &v.instance_type),
        ] {
            if &before != after {
                fields.push(field(
                    &format!("variants.{}.{what}", v.name),
                    &before,
                    after,
                ));
            }
        }
    }
    for name in live.keys() {
        fields.push(field(&format!("variants.{name}"), name, ""));
    }
    fields
}

async fn list_endpoints(client: &Client) -> Result<Vec<String>, AwsError> {
    let mut names = Vec::new();
    let mut token = None;
    loop {
        let out = client
            .list_endpoints()
            .max_results(100)
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| AwsError::Api(format!("ListEndpoints: {}", describe(&e))))?;
        names.extend(
            out.endpoints()
                .iter()
                .filter_map(|e| e.endpoint_name().map(str::to_string)),
        );
        token = out.next_token().map(str::to_string);
        if token.is_none() {
            return Ok(names);
        }
    }
}

async fn endpoint_arn_of(client: &Client, name: &str) -> Result<String, AwsError> {
    let out = client
        .describe_endpoint()
        .endpoint_name(name)
        .send()
        .await
        .map_err(|e| AwsError::Api(format!("DescribeEndpoint {name}: {}", describe(&e))))?;
    Ok(out.endpoint_arn().unwrap_or_default().to_string())
}

async fn tags_of(client: &Client, arn: &str) -> Result<BTreeMap<String, String>, AwsError> {
    let out = client
        .list_tags()
        .resource_arn(arn)
        .send()
        .await
        .map_err(|e| AwsError::Api(format!("ListTags {arn}: {}", describe(&e))))?;
    Ok(out
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
        .collect())
}

/// Managed by ferry for this source (and so ferry's to delete).
async fn owned_by(client: &Client, arn: &str, source: &str) -> Result<bool, AwsError> {
    let tags = tags_of(client, arn).await?;
    Ok(tags.get(MANAGED_TAG).map(String::as_str) == Some("true")
        && tags.get("ferry.dev/source").map(String::as_str) == Some(source))
}

fn tags(provenance: &Provenance, endpoint: &Endpoint) -> Vec<Tag> {
    let mut all: BTreeMap<String, String> = endpoint.tags.clone();
    all.insert(MANAGED_TAG.into(), "true".into());
    all.insert("ferry.dev/source".into(), provenance.source.clone());
    all.insert("ferry.dev/repo".into(), provenance.repo.clone());
    all.insert("ferry.dev/commit".into(), provenance.commit.clone());
    all.insert("ferry.dev/endpoint".into(), endpoint.name.clone());
    all.into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

pub async fn apply(
    clients: &SageMakerClients,
    op: &SageMakerOp,
    provenance: &Provenance,
    limits: &Limits,
    cancel: &AtomicBool,
    cleaned: &mut Vec<String>,
) -> Result<(), String> {
    match op {
        SageMakerOp::Deploy {
            endpoint,
            models,
            variant_models,
            config_name,
            create,
            replace,
            tags: tag_sync,
            unscale_first,
            retain_counts,
        } => {
            let client = &clients.control;
            let tags = tags(provenance, endpoint);
            for model in models {
                if client
                    .describe_model()
                    .model_name(&model.name)
                    .send()
                    .await
                    .is_ok()
                {
                    continue;
                }
                client
                    .create_model()
                    .model_name(&model.name)
                    .execution_role_arn(&model.role)
                    .primary_container(
                        ContainerDefinition::builder()
                            .image(&model.image)
                            .model_data_url(&model.model_data)
                            .build(),
                    )
                    .set_tags(Some(tags.clone()))
                    .send()
                    .await
                    .map_err(|e| format!("CreateModel {}: {}", model.name, describe(&e)))?;
            }
            let config_exists = client
                .describe_endpoint_config()
                .endpoint_config_name(config_name)
                .send()
                .await
                .is_ok();
            if !config_exists {
                let mut call = client
                    .create_endpoint_config()
                    .endpoint_config_name(config_name)
                    .set_tags(Some(tags.clone()));
                for v in &endpoint.variants {
                    call = call.production_variants(
                        ProductionVariant::builder()
                            .variant_name(&v.name)
                            .model_name(&variant_models[&v.name])
                            .instance_type(ProductionVariantInstanceType::from(
                                v.instance_type.as_str(),
                            ))
                            .initial_instance_count(v.initial_instance_count)
                            .initial_variant_weight(v.weight)
                            .build(),
                    );
                }
                if endpoint.data_capture.enabled {
                    call = call.data_capture_config(
                        DataCaptureConfig::builder()
                            .enable_capture(true)
                            .initial_sampling_percentage(endpoint.data_capture.sampling_percentage)
                            .destination_s3_uri(
                                endpoint
                                    .data_capture
                                    .destination
                                    .clone()
                                    .unwrap_or_default(),
                            )
                            .capture_options(
                                CaptureOption::builder()
                                    .capture_mode(CaptureMode::Input)
                                    .build(),
                            )
                            .capture_options(
                                CaptureOption::builder()
                                    .capture_mode(CaptureMode::Output)
                                    .build(),
                            )
                            .build(),
                    );
                }
                call.send()
                    .await
                    .map_err(|e| format!("CreateEndpointConfig {config_name}: {}", describe(&e)))?;
            }
            // The config serving before this deploy: where a failed smoke
            // test goes back to.
            let mut previous = None;
            if *replace {
                remove_endpoint(client, &endpoint.name, limits, cancel).await?;
            }
            if *create {
                client
                    .create_endpoint()
                    .endpoint_name(&endpoint.name)
                    .endpoint_config_name(config_name)
                    .set_tags(Some(tags.clone()))
                    .send()
                    .await
                    .map_err(|e| format!("CreateEndpoint: {}", describe(&e)))?;
            } else {
                let mut live = describe_endpoint(client, &endpoint.name).await?;
                if live.endpoint_status().is_some_and(transitional)
                    && !deploying_to(&live, config_name)
                {
                    // Someone else's deployment: SageMaker refuses a second
                    // one until it ends.
                    live = wait_in_service(client, &endpoint.name, limits, cancel).await?;
                }
                let ours = deploying_to(&live, config_name)
                    || live.endpoint_config_name() == Some(config_name.as_str());
                if !ours {
                    previous = live.endpoint_config_name().map(str::to_string);
                    for variant in unscale_first {
                        scaling::remove(&clients.scaling, &endpoint.name, variant).await?;
                    }
                    update_endpoint(client, &endpoint.name, config_name, *retain_counts).await?;
                }
            }
            let settled = match wait_in_service(client, &endpoint.name, limits, cancel).await {
                Ok(settled) => settled,
                // A new endpoint that failed serves nothing: delete it, so
                // the next attempt creates it again rather than finding it
                // Failed (SageMaker updates no Failed endpoint).
                Err(why) if *create => {
                    return Err(
                        match remove_endpoint(client, &endpoint.name, limits, cancel).await {
                            Ok(()) => format!(
                                "{why}; the new endpoint is deleted (nothing served before it)"
                            ),
                            Err(e) => format!("{why}; deleting it: {e}"),
                        },
                    );
                }
                Err(why) => return Err(why),
            };
            let serving = settled.endpoint_config_name().unwrap_or_default();
            if serving != config_name {
                return Err(format!(
                    "deployment of {config_name} failed ({}); {serving} keeps serving",
                    settled.failure_reason().unwrap_or("no reason given")
                ));
            }
            if let Some(test) = &endpoint.smoke_test
                && let Err(why) = smoke(&clients.runtime, endpoint, test).await
            {
                let undone = match (*create, previous) {
                    (true, _) => {
                        // Nothing served before it: a model that does not
                        // answer is not left serving, and the next attempt
                        // creates it again (and tests it again).
                        remove_endpoint(client, &endpoint.name, limits, cancel)
                            .await
                            .map_err(|e| format!("smoke test failed: {why}; {e}"))?;
                        "the new endpoint is deleted (nothing served before it)".to_string()
                    }
                    (false, Some(previous)) => {
                        update_endpoint(client, &endpoint.name, &previous, *retain_counts)
                            .await
                            .map_err(|e| format!("smoke test failed: {why}; rolling back: {e}"))?;
                        let back = wait_in_service(client, &endpoint.name, limits, cancel)
                            .await
                            .map_err(|e| format!("smoke test failed: {why}; rolling back: {e}"))?;
                        format!(
                            "rolled back: {} serves again",
                            back.endpoint_config_name().unwrap_or(&previous)
                        )
                    }
                    (false, None) => "no earlier config is known to go back to (the deployment was started before ferry restarted)".to_string(),
                };
                return Err(format!(
                    "smoke test of {config_name} failed: {why}; {undone}"
                ));
            }
            let keep: BTreeSet<String> = models
                .iter()
                .map(|m| m.name.clone())
                .chain(std::iter::once(config_name.clone()))
                .collect();
            clean(client, &endpoint.name, &keep, cleaned).await;
            let arn = settled.endpoint_arn().unwrap_or_default();
            sync_tags(client, arn, tag_sync).await
        }
        SageMakerOp::Update {
            endpoint,
            arn,
            weights,
            tags,
        } => {
            let client = &clients.control;
            if let Some(variants) = weights {
                let mut call = client
                    .update_endpoint_weights_and_capacities()
                    .endpoint_name(endpoint);
                for (name, weight, count) in variants {
                    call = call.desired_weights_and_capacities(
                        DesiredWeightAndCapacity::builder()
                            .variant_name(name)
                            .desired_weight(*weight)
                            .set_desired_instance_count(*count)
                            .build(),
                    );
                }
                call.send()
                    .await
                    .map_err(|e| format!("UpdateEndpointWeightsAndCapacities: {}", describe(&e)))?;
                wait_in_service(client, endpoint, limits, cancel).await?;
            }
            sync_tags(client, arn, tags).await
        }
        SageMakerOp::Delete { endpoint } => {
            let client = &clients.control;
            client
                .delete_endpoint()
                .endpoint_name(endpoint)
                .send()
                .await
                .map_err(|e| format!("DeleteEndpoint: {}", describe(&e)))?;
            clean(client, endpoint, &BTreeSet::new(), cleaned).await;
            Ok(())
        }
    }
}

/// UpdateEndpoint to `config`. With `retain_counts`, same-named variants
/// keep their live instance counts (the autoscaler's) and take weights and
/// data capture from the new config.
async fn update_endpoint(
    client: &Client,
    endpoint: &str,
    config: &str,
    retain_counts: bool,
) -> Result<(), String> {
    let mut call = client
        .update_endpoint()
        .endpoint_name(endpoint)
        .endpoint_config_name(config);
    if retain_counts {
        call = call.retain_all_variant_properties(true);
        for kind in [
            VariantPropertyType::DesiredWeight,
            VariantPropertyType::DataCaptureConfig,
        ] {
            call = call.exclude_retained_variant_properties(
                VariantProperty::builder()
                    .variant_property_type(kind)
                    .build(),
            );
        }
    }
    call.send()
        .await
        .map(|_| ())
        .map_err(|e| format!("UpdateEndpoint: {}", describe(&e)))
}

/// Invokes each variant of the endpoint (`TargetVariant`) with the test's
/// payload: every variant of the new config must answer, not only the one
/// the weights happen to pick.
async fn smoke(
    runtime: &aws_sdk_sagemakerruntime::Client,
    endpoint: &Endpoint,
    test: &SmokeTest,
) -> Result<(), String> {
    for variant in &endpoint.variants {
        let out = runtime
            .invoke_endpoint()
            .endpoint_name(&endpoint.name)
            .target_variant(&variant.name)
            .content_type(&test.content_type)
            .body(aws_sdk_sagemakerruntime::primitives::Blob::new(
                test.body.clone(),
            ))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "variant {} did not answer: InvokeEndpoint: {}",
                    variant.name,
                    describe(&e)
                )
            })?;
        let body = out
            .body()
            .map(|b| String::from_utf8_lossy(b.as_ref()).into_owned())
            .unwrap_or_default();
        if !body.contains(&test.expect_contains) {
            return Err(format!(
                "variant {} answered without `{}`: {}",
                variant.name,
                test.expect_contains,
                excerpt(&body)
            ));
        }
    }
    Ok(())
}

/// The start of an answer, for a commit status (which GitHub caps).
fn excerpt(body: &str) -> String {
    const MAX: usize = 300;
    match body.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &body[..at]),
        None => body.to_string(),
    }
}

/// Either call failing leaves a difference that the next plan shows again.
async fn sync_tags(client: &Client, arn: &str, sync: &TagSync) -> Result<(), String> {
    if !sync.remove.is_empty() {
        client
            .delete_tags()
            .resource_arn(arn)
            .set_tag_keys(Some(sync.remove.clone()))
            .send()
            .await
            .map_err(|e| format!("DeleteTags {arn}: {}", describe(&e)))?;
    }
    if !sync.set.is_empty() {
        let tags = sync
            .set
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        client
            .add_tags()
            .resource_arn(arn)
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| format!("AddTags {arn}: {}", describe(&e)))?;
    }
    Ok(())
}

type Described = aws_sdk_sagemaker::operation::describe_endpoint::DescribeEndpointOutput;

async fn describe_endpoint(client: &Client, name: &str) -> Result<Described, String> {
    client
        .describe_endpoint()
        .endpoint_name(name)
        .send()
        .await
        .map_err(|e| format!("DescribeEndpoint: {}", describe(&e)))
}

/// States from which SageMaker moves on by itself.
fn transitional(status: &EndpointStatus) -> bool {
    matches!(
        status,
        EndpointStatus::Creating
            | EndpointStatus::Updating
            | EndpointStatus::SystemUpdating
            | EndpointStatus::RollingBack
    )
}

/// Whether the endpoint is being deployed with `config`: the pending
/// deployment names it, or (a new endpoint, or no summary) it is the
/// endpoint's config while the endpoint is transitional.
fn deploying_to(live: &Described, config: &str) -> bool {
    if !live.endpoint_status().is_some_and(transitional) {
        return false;
    }
    match live
        .pending_deployment_summary()
        .and_then(|p| p.endpoint_config_name())
    {
        Some(pending) => pending == config,
        None => live.endpoint_config_name() == Some(config),
    }
}

/// Follows an endpoint until it leaves its transitional states. `Failed`
/// is an error carrying SageMaker's `FailureReason`.
async fn wait_in_service(
    client: &Client,
    name: &str,
    limits: &Limits,
    cancel: &AtomicBool,
) -> Result<Described, String> {
    super::follow(&format!("endpoint {name}"), limits, cancel, || async {
        let out = describe_endpoint(client, name).await?;
        match out.endpoint_status() {
            Some(EndpointStatus::InService) => Ok(Some(out)),
            Some(EndpointStatus::Failed) | Some(EndpointStatus::OutOfService) => Err(format!(
                "endpoint {name} is {}: {}",
                out.endpoint_status().map(|s| s.as_str()).unwrap_or(""),
                out.failure_reason().unwrap_or("no reason given")
            )),
            _ => Ok(None),
        }
    })
    .await
}

/// Deletes endpoint `name` (if it is still there) and follows it until
/// SageMaker no longer knows it, so that it can be created again.
async fn remove_endpoint(
    client: &Client,
    name: &str,
    limits: &Limits,
    cancel: &AtomicBool,
) -> Result<(), String> {
    super::follow(&format!("endpoint {name}"), limits, cancel, || async {
        match client.describe_endpoint().endpoint_name(name).send().await {
            Ok(out) if out.endpoint_status() == Some(&EndpointStatus::Deleting) => Ok(None),
            Ok(_) => match client.delete_endpoint().endpoint_name(name).send().await {
                Ok(_) => Ok(None),
                Err(e) => Err(format!("DeleteEndpoint: {}", describe(&e))),
            },
            Err(e) if not_found(super::code(&e).as_deref(), &describe(&e)) => Ok(Some(())),
            Err(e) => Err(format!("DescribeEndpoint: {}", describe(&e))),
        }
    })
    .await
}

/// One page of (name, ARN) pairs and the token of the next page.
type Page = (Vec<(String, String)>, Option<String>);

/// (name, ARN) of the endpoint configs or models whose name contains
/// `endpoint`, every page; best effort (housekeeping only).
async fn list_named(client: &Client, endpoint: &str, kind: &str) -> Vec<(String, String)> {
    let mut all = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page: Option<Page> = if kind == "config" {
            client
                .list_endpoint_configs()
                .name_contains(endpoint)
                .max_results(100)
                .set_next_token(token.take())
                .send()
                .await
                .ok()
                .map(|out| {
                    let items = out
                        .endpoint_configs()
                        .iter()
                        .filter_map(|c| {
                            Some((
                                c.endpoint_config_name()?.to_string(),
                                c.endpoint_config_arn()?.to_string(),
                            ))
                        })
                        .collect();
                    (items, out.next_token().map(str::to_string))
                })
        } else {
            client
                .list_models()
                .name_contains(endpoint)
                .max_results(100)
                .set_next_token(token.take())
                .send()
                .await
                .ok()
                .map(|out| {
                    let items = out
                        .models()
                        .iter()
                        .filter_map(|m| {
                            Some((m.model_name()?.to_string(), m.model_arn()?.to_string()))
                        })
                        .collect();
                    (items, out.next_token().map(str::to_string))
                })
        };
        let Some((items, next)) = page else {
            return all;
        };
        all.extend(items);
        match next {
            Some(next) => token = Some(next),
            None => return all,
        }
    }
}

/// Deletes ferry's models and configs of `endpoint` that are not in `keep`.
/// Housekeeping: a failure is logged, never fails the deploy.
async fn clean(
    client: &Client,
    endpoint: &str,
    keep: &BTreeSet<String>,
    cleaned: &mut Vec<String>,
) {
    let configs = list_named(client, endpoint, "config").await;
    let models = list_named(client, endpoint, "model").await;
    for (kind, list) in [("config", configs), ("model", models)] {
        for (name, arn) in list {
            if keep.contains(&name) || !is_ferry_name(endpoint, &name) {
                continue;
            }
            let managed = tags_of(client, &arn)
                .await
                .map(|t| t.get(MANAGED_TAG).map(String::as_str) == Some("true"))
                .unwrap_or(false);
            if !managed {
                continue;
            }
            let deleted = if kind == "config" {
                client
                    .delete_endpoint_config()
                    .endpoint_config_name(&name)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| describe(&e))
            } else {
                client
                    .delete_model()
                    .model_name(&name)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| describe(&e))
            };
            match deleted {
                Ok(()) => cleaned.push(format!("{kind} {name}")),
                Err(e) => {
                    tracing::warn!(kind, name = %name, error = %e, "cannot delete an unreferenced SageMaker resource")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::platform::{DataCapture, Variant};

    fn endpoint(image: &str, weight: f32) -> Endpoint {
        Endpoint {
            name: "churn".into(),
            execution_role_arn: "arn:aws:iam::123456789012:role/sm".into(),
            variants: vec![Variant {
                name: "primary".into(),
                model_name: "churn".into(),
                image: image.into(),
                model_data: "s3://models/churn/1/model.tar.gz".into(),
                instance_type: "ml.m5.large".into(),
                initial_instance_count: 1,
                weight,
                autoscaling: None,
            }],
            data_capture: DataCapture::default(),
            tags: BTreeMap::new(),
            smoke_test: None,
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn git_owns_the_tags_of_endpoints_ferry_created_except_reserved_ones() {
        let declared = map(&[("team", "ml"), ("cost-center", "42")]);
        let live = map(&[
            ("team", "ds"),
            ("owner", "someone"),
            ("aws:cloudformation:stack", "s"),
            (MANAGED_TAG, "true"),
            ("ferry.dev/commit", "abc"),
        ]);
        let sync = TagSync::between(&declared, &live);
        assert_eq!(sync.set, map(&[("team", "ml"), ("cost-center", "42")]));
        assert_eq!(sync.remove, ["owner"]);
        let fields: Vec<(String, String, String)> = sync
            .fields(&live)
            .map(|f| (f.field, f.before, f.after))
            .collect();
        assert!(fields.contains(&("tags.team".into(), "ds".into(), "ml".into())));
        assert!(fields.contains(&("tags.owner".into(), "someone".into(), String::new())));

        // An endpoint ferry adopted keeps tags git never declared.
        let adopted = map(&[("team", "ds"), ("owner", "someone")]);
        let sync = TagSync::between(&declared, &adopted);
        assert!(sync.remove.is_empty(), "{sync:?}");
        assert_eq!(sync.set.len(), 2);

        let same = map(&[("team", "ml"), ("cost-center", "42"), (MANAGED_TAG, "true")]);
        assert!(TagSync::between(&declared, &same).is_empty());
    }

    #[test]
    fn names_follow_content_and_ignore_weights() {
        let (models, _, config) = names(&endpoint("img:1", 1.0));
        assert!(is_ferry_name("churn", &models[0].name) && is_ferry_name("churn", &config));
        let (_, _, same) = names(&endpoint("img:1", 0.3));
        assert_eq!(config, same, "a weight change keeps the config");
        let (models2, _, other) = names(&endpoint("img:2", 1.0));
        assert_ne!(config, other);
        assert_ne!(models[0].name, models2[0].name);
        assert!(!is_ferry_name("churn", "churn-v2-0123abcd"));
        assert!(!is_ferry_name("churn", "churnx-0123abcd"));
    }
}
