//! Reading a secret's current value from AWS Secrets Manager for the
//! Kubernetes Secrets that name it. Values are held as [`Secret`] from the
//! moment they arrive, so no error or log line can carry one; only the
//! version id (not secret) is ever shown.

use crate::config::SecretsManagerConfig;
use crate::secret::Secret;

/// One secret's current value (`AWSCURRENT`).
pub struct Current {
    pub version: String,
    pub text: Secret,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No such secret (or it is scheduled for deletion): the declaration's
    /// to fix, or Terraform's to create.
    #[error(
        "{id}: not found in Secrets Manager (no such secret, or no current value yet: put one with `aws secretsmanager put-secret-value`): {detail}"
    )]
    Missing { id: String, detail: String },
    /// A binary secret: a Kubernetes key takes text here.
    #[error("{id} holds a binary value; ferry copies text (SecretString) only")]
    Binary { id: String },
    /// Refused, throttled or unreachable: may pass (IAM fixed, the
    /// network back), so retried.
    #[error("cannot read {id} from Secrets Manager: {detail}")]
    Unavailable { id: String, detail: String },
}

pub struct SecretsManager {
    client: aws_sdk_secretsmanager::Client,
}

impl SecretsManager {
    pub async fn connect(config: &SecretsManagerConfig) -> SecretsManager {
        let sdk = super::sdk_config(
            config.region.as_deref(),
            config.endpoint_url.as_deref(),
            config.static_credentials.as_ref(),
        )
        .await;
        SecretsManager {
            client: aws_sdk_secretsmanager::Client::new(&sdk),
        }
    }

    /// The current value of `id` (a name or an ARN).
    pub async fn current(&self, id: &str) -> Result<Current, ReadError> {
        let out = self
            .client
            .get_secret_value()
            .secret_id(id)
            .send()
            .await
            .map_err(|e| {
                let detail = super::describe(&e);
                // A secret marked for deletion answers InvalidRequest: as
                // good as gone for a Secret that must be filled.
                match super::code(&e).as_deref() {
                    Some("ResourceNotFoundException") | Some("InvalidRequestException") => {
                        ReadError::Missing {
                            id: id.to_string(),
                            detail,
                        }
                    }
                    _ => ReadError::Unavailable {
                        id: id.to_string(),
                        detail,
                    },
                }
            })?;
        let version = out.version_id().unwrap_or_default().to_string();
        match out.secret_string {
            Some(text) => Ok(Current {
                version,
                text: Secret::new(text),
            }),
            None => Err(ReadError::Binary { id: id.to_string() }),
        }
    }
}
