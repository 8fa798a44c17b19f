//! Autoscaling of SageMaker variants with Application Auto Scaling: a
//! scalable target on the variant's instance count and one target-tracking
//! policy of ferry's on invocations per instance. While a variant is
//! autoscaled the autoscaler owns its instance count: ferry neither
//! reports it as drift nor sets it (see `sagemaker::plan`).
//!
//! Ownership: ferry removes a target only when its own policy is on it, so
//! autoscaling someone set up by hand is left alone (and reported).

use std::collections::BTreeMap;

use aws_sdk_applicationautoscaling::Client;
use aws_sdk_applicationautoscaling::types::{
    MetricType, PolicyType, PredefinedMetricSpecification, ScalableDimension, ServiceNamespace,
    TargetTrackingScalingPolicyConfiguration,
};

use super::{AwsError, FieldChange, describe};
use crate::desired::platform::Autoscaling;

/// The name of ferry's policy on each target it manages.
pub const POLICY: &str = "ferry-invocations-per-instance";

fn namespace() -> ServiceNamespace {
    ServiceNamespace::Sagemaker
}

fn dimension() -> ScalableDimension {
    ScalableDimension::SageMakerVariantDesiredInstanceCount
}

/// Application Auto Scaling's name for a variant.
pub fn resource_id(endpoint: &str, variant: &str) -> String {
    format!("endpoint/{endpoint}/variant/{variant}")
}

/// A variant's live scalable target, and ferry's policy on it if any.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveScaling {
    pub min: i32,
    pub max: i32,
    /// (target value, scale-in cooldown, scale-out cooldown).
    pub policy: Option<(f64, i32, i32)>,
}

impl LiveScaling {
    /// Made by ferry, so ferry's to change and remove.
    pub fn ours(&self) -> bool {
        self.policy.is_some()
    }
}

#[derive(Debug, Clone)]
pub enum ScalingOp {
    Set {
        endpoint: String,
        variant: String,
        spec: Autoscaling,
    },
    Remove {
        endpoint: String,
        variant: String,
    },
}

/// The live scaling of `endpoint`'s `variants`, by variant name.
pub async fn live(
    client: &Client,
    endpoint: &str,
    variants: &[&str],
) -> Result<BTreeMap<String, LiveScaling>, AwsError> {
    let ids: Vec<String> = variants.iter().map(|v| resource_id(endpoint, v)).collect();
    let mut found = BTreeMap::new();
    if ids.is_empty() {
        return Ok(found);
    }
    let targets = client
        .describe_scalable_targets()
        .service_namespace(namespace())
        .scalable_dimension(dimension())
        .set_resource_ids(Some(ids))
        .send()
        .await
        .map_err(|e| {
            AwsError::Api(format!(
                "sagemaker/endpoint/{endpoint}: DescribeScalableTargets: {}",
                describe(&e)
            ))
        })?;
    for target in targets.scalable_targets() {
        let Some(variant) = variants
            .iter()
            .find(|v| resource_id(endpoint, v) == target.resource_id())
        else {
            continue;
        };
        let policies = client
            .describe_scaling_policies()
            .service_namespace(namespace())
            .scalable_dimension(dimension())
            .resource_id(target.resource_id())
            .policy_names(POLICY)
            .send()
            .await
            .map_err(|e| {
                AwsError::Api(format!(
                    "sagemaker/endpoint/{endpoint}: DescribeScalingPolicies: {}",
                    describe(&e)
                ))
            })?;
        let policy = policies
            .scaling_policies()
            .iter()
            .find(|p| p.policy_name() == POLICY)
            .map(|p| {
                let c = p.target_tracking_scaling_policy_configuration();
                (
                    c.map(|c| c.target_value()).unwrap_or_default(),
                    c.and_then(|c| c.scale_in_cooldown()).unwrap_or_default(),
                    c.and_then(|c| c.scale_out_cooldown()).unwrap_or_default(),
                )
            });
        found.insert(
            variant.to_string(),
            LiveScaling {
                min: target.min_capacity(),
                max: target.max_capacity(),
                policy,
            },
        );
    }
    Ok(found)
}

/// What setting `declared` on a variant whose live scaling is `live`
/// changes, field by field (`autoscaling.min`, ...).
pub fn fields(declared: &Autoscaling, live: Option<&LiveScaling>) -> Vec<FieldChange> {
    let (min, max) = live.map(|l| (l.min, l.max)).unzip();
    let policy = live.and_then(|l| l.policy);
    let text = |v: Option<String>| v.unwrap_or_default();
    [
        (
            "min",
            text(min.map(|m| m.to_string())),
            declared.min.to_string(),
        ),
        (
            "max",
            text(max.map(|m| m.to_string())),
            declared.max.to_string(),
        ),
        (
            "target_invocations_per_instance",
            text(policy.map(|p| p.0.to_string())),
            declared.target_invocations_per_instance.to_string(),
        ),
        (
            "scale_in_cooldown",
            text(policy.map(|p| p.1.to_string())),
            declared.scale_in_cooldown.to_string(),
        ),
        (
            "scale_out_cooldown",
            text(policy.map(|p| p.2.to_string())),
            declared.scale_out_cooldown.to_string(),
        ),
    ]
    .into_iter()
    .filter(|(_, before, after)| before != after)
    .map(|(field, before, after)| FieldChange {
        field: format!("autoscaling.{field}"),
        before,
        after,
    })
    .collect()
}

/// The fields a removal clears.
pub fn removed_fields(live: &LiveScaling) -> Vec<FieldChange> {
    vec![
        FieldChange {
            field: "autoscaling.min".into(),
            before: live.min.to_string(),
            after: String::new(),
        },
        FieldChange {
            field: "autoscaling.max".into(),
            before: live.max.to_string(),
            after: String::new(),
        },
    ]
}

pub async fn apply(client: &Client, op: &ScalingOp) -> Result<(), String> {
    match op {
        ScalingOp::Set {
            endpoint,
            variant,
            spec,
        } => {
            let id = resource_id(endpoint, variant);
            // Registering an existing target updates its bounds in place.
            client
                .register_scalable_target()
                .service_namespace(namespace())
                .scalable_dimension(dimension())
                .resource_id(&id)
                .min_capacity(spec.min)
                .max_capacity(spec.max)
                .send()
                .await
                .map_err(|e| format!("RegisterScalableTarget {id}: {}", describe(&e)))?;
            let metric = PredefinedMetricSpecification::builder()
                .predefined_metric_type(MetricType::SageMakerVariantInvocationsPerInstance)
                .build()
                .map_err(|e| format!("PutScalingPolicy {id}: {e}"))?;
            let config = TargetTrackingScalingPolicyConfiguration::builder()
                .target_value(spec.target_invocations_per_instance)
                .predefined_metric_specification(metric)
                .scale_in_cooldown(spec.scale_in_cooldown)
                .scale_out_cooldown(spec.scale_out_cooldown)
                .build()
                .map_err(|e| format!("PutScalingPolicy {id}: {e}"))?;
            client
                .put_scaling_policy()
                .policy_name(POLICY)
                .service_namespace(namespace())
                .scalable_dimension(dimension())
                .resource_id(&id)
                .policy_type(PolicyType::TargetTrackingScaling)
                .target_tracking_scaling_policy_configuration(config)
                .send()
                .await
                .map_err(|e| format!("PutScalingPolicy {id}: {}", describe(&e)))?;
            Ok(())
        }
        ScalingOp::Remove { endpoint, variant } => remove(client, endpoint, variant).await,
    }
}

/// Deletes ferry's policy and deregisters the target. Also what a deploy
/// does first when it changes an autoscaled variant's instance type or
/// removes the variant: SageMaker refuses those updates while the variant
/// is a scalable target.
pub async fn remove(client: &Client, endpoint: &str, variant: &str) -> Result<(), String> {
    let id = resource_id(endpoint, variant);
    let deleted = client
        .delete_scaling_policy()
        .policy_name(POLICY)
        .service_namespace(namespace())
        .scalable_dimension(dimension())
        .resource_id(&id)
        .send()
        .await;
    if let Err(e) = deleted
        && super::code(&e).as_deref() != Some("ObjectNotFoundException")
    {
        return Err(format!("DeleteScalingPolicy {id}: {}", describe(&e)));
    }
    client
        .deregister_scalable_target()
        .service_namespace(namespace())
        .scalable_dimension(dimension())
        .resource_id(&id)
        .send()
        .await
        .map_err(|e| format!("DeregisterScalableTarget {id}: {}", describe(&e)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(min: i32, max: i32, target: f64) -> Autoscaling {
        Autoscaling {
            min,
            max,
            target_invocations_per_instance: target,
            scale_in_cooldown: 300,
            scale_out_cooldown: 60,
        }
    }

    #[test]
    fn only_what_differs_is_a_field() {
        let live = LiveScaling {
            min: 1,
            max: 4,
            policy: Some((70.0, 300, 60)),
        };
        assert!(fields(&spec(1, 4, 70.0), Some(&live)).is_empty());
        let changed: Vec<(String, String, String)> = fields(&spec(1, 6, 50.0), Some(&live))
            .into_iter()
            .map(|f| (f.field, f.before, f.after))
            .collect();
        assert_eq!(
            changed,
            [
                ("autoscaling.max".into(), "4".into(), "6".into()),
                (
                    "autoscaling.target_invocations_per_instance".into(),
                    "70".into(),
                    "50".into()
                ),
            ]
        );
        // A target made by hand, without ferry's policy: the policy is new.
        let by_hand = LiveScaling {
            policy: None,
            ..live
        };
        assert!(!by_hand.ours());
        assert_eq!(fields(&spec(1, 4, 70.0), Some(&by_hand)).len(), 3);
        assert_eq!(fields(&spec(1, 4, 70.0), None).len(), 5);
    }
}
