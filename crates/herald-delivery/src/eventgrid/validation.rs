//! Proof of endpoint ownership before any event is delivered (spec §7, §3.5).

use super::{EventGrid, upper_name};
use crate::engine::http::Outcome;
use bytes::Bytes;
use chrono::Utc;
use herald_core::ProvisioningState;
use herald_core::event::event_time;
use herald_router::schema::DeliverySchema;
use herald_router::subscription::Destination;
use herald_router::{RouterResult, Subscription, TopicInfo};
use http::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// How long a manual validation link stays valid.
pub const MANUAL_WINDOW_SECS: i64 = 600;
const ATTEMPTS: u32 = 3;

/// How a manual validation token is stored: only its hash, so the
/// database never holds a usable link.
pub fn token_hash(token: &str) -> String {
    hex_encode(&Sha256::digest(token.as_bytes()))
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

enum Verdict {
    Succeeded,
    Manual,
    Failed(String),
}

impl EventGrid {
    /// Runs the handshake for a webhook subscription and records the result:
    /// `Succeeded`, `AwaitingManualAction` or `Failed` with a reason.
    pub(crate) async fn validate(
        &self,
        topic: &TopicInfo,
        sub: &mut Subscription,
    ) -> RouterResult<()> {
        let Some(Destination::WebHook(hook)) = sub.properties.destination.clone() else {
            return Ok(());
        };
        if let Err(e) = self.client.check_target(&hook.endpoint_url) {
            let reason = format!(
                "The endpoint {} is not allowed: {e}",
                base_url(&hook.endpoint_url)
            );
            return self
                .router
                .set_subscription_state(sub, ProvisioningState::Failed, Some(&reason))
                .await;
        }
        if self.is_internal(&hook.endpoint_url) {
            // Herald's own automation webhooks are trusted, as Azure trusts its services.
            return self
                .router
                .set_subscription_state(sub, ProvisioningState::Succeeded, None)
                .await;
        }
        let verdict = match sub.properties.event_delivery_schema {
            DeliverySchema::CloudEventSchemaV1_0 => {
                self.options_handshake(&hook.endpoint_url).await
            }
            _ => {
                self.validation_event(topic, sub, &hook.endpoint_url)
                    .await?
            }
        };
        match verdict {
            Verdict::Succeeded => self.router.set_subscription_state(sub, ProvisioningState::Succeeded, None).await,
            Verdict::Manual => {
                self.router
                    .set_subscription_state(
                        sub,
                        ProvisioningState::AwaitingManualAction,
                        Some("The endpoint answered 200 without validationResponse; GET the validationUrl it was sent within 10 minutes."),
                    )
                    .await
            }
            Verdict::Failed(reason) => self.router.set_subscription_state(sub, ProvisioningState::Failed, Some(&reason)).await,
        }
    }

    async fn validation_event(
        &self,
        topic: &TopicInfo,
        sub: &Subscription,
        url: &str,
    ) -> RouterResult<Verdict> {
        let code = uuid::Uuid::new_v4().to_string();
        let token = herald_core::new_token("val");
        let now = Utc::now();
        let validation_url = format!(
            "{}/eventsubscriptions/{}/validate?id={code}&t={}&apiVersion=2018-05-01-preview&token={token}",
            self.settings.public_base_url,
            sub.record.name,
            event_time(now),
        );
        let event = json!([{
            "id": uuid::Uuid::new_v4().to_string(),
            "topic": topic.record.arm_id,
            "subject": "",
            "data": { "validationCode": code, "validationUrl": validation_url },
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "eventTime": event_time(now),
            "metadataVersion": "1",
            "dataVersion": "1",
        }]);
        let body = Bytes::from(serde_json::to_vec(&event).unwrap_or_default());
        let headers = vec![
            (
                "content-type".to_owned(),
                "application/json; charset=utf-8".to_owned(),
            ),
            (
                "aeg-event-type".to_owned(),
                "SubscriptionValidation".to_owned(),
            ),
            (
                "aeg-subscription-name".to_owned(),
                upper_name(&sub.record.name),
            ),
            ("aeg-metadata-version".to_owned(), "1".to_owned()),
            ("aeg-data-version".to_owned(), "1".to_owned()),
        ];
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            match self
                .client
                .send(Method::POST, url, &headers, body.clone())
                .await
            {
                Outcome::Response(r) if r.status == 200 => {
                    let answered = serde_json::from_slice::<Value>(&r.body).ok().and_then(|v| {
                        v.as_object()?
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case("validationResponse"))
                            .and_then(|(_, v)| v.as_str().map(str::to_owned))
                    });
                    if answered.as_deref() == Some(code.as_str()) {
                        return Ok(Verdict::Succeeded);
                    }
                    self.storage
                        .put_validation(
                            &sub.record.id,
                            &code,
                            &token_hash(&token),
                            now.timestamp() + MANUAL_WINDOW_SECS,
                        )
                        .await?;
                    return Ok(Verdict::Manual);
                }
                Outcome::Response(r) => {
                    last = format!(
                        "Webhook validation handshake failed for {}: the endpoint answered HTTP {} (a 200 with {{\"validationResponse\": code}} is required).",
                        base_url(url),
                        r.status
                    );
                    // Only a timeout or connection failure is worth another attempt.
                    break;
                }
                Outcome::Failed { kind, message, .. } => {
                    last = format!(
                        "Webhook validation handshake failed for {}: {kind:?} ({message}).",
                        base_url(url)
                    );
                }
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(self.scaled(Duration::from_secs(5))).await;
            }
        }
        Ok(Verdict::Failed(last))
    }

    /// CloudEvents abuse protection: consent is the WebHook-Allowed-Origin header.
    async fn options_handshake(&self, url: &str) -> Verdict {
        let origin = &self.settings.origin;
        let headers = vec![
            ("webhook-request-origin".to_owned(), origin.clone()),
            ("webhook-request-rate".to_owned(), "120".to_owned()),
        ];
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            match self
                .client
                .send(Method::OPTIONS, url, &headers, Bytes::new())
                .await
            {
                Outcome::Response(r) => {
                    let allowed = r
                        .headers
                        .get("webhook-allowed-origin")
                        .and_then(|v| v.to_str().ok())
                        .map(str::trim);
                    if (200..300).contains(&r.status)
                        && (allowed == Some("*") || allowed == Some(origin.as_str()))
                    {
                        return Verdict::Succeeded;
                    }
                    return Verdict::Failed(format!(
                        "CloudEvents abuse-protection handshake failed for {}: HTTP {} with WebHook-Allowed-Origin {:?} (expected '{origin}' or '*').",
                        base_url(url),
                        r.status,
                        allowed.unwrap_or("missing")
                    ));
                }
                Outcome::Failed { kind, message, .. } => {
                    last = format!(
                        "CloudEvents abuse-protection handshake failed for {}: {kind:?} ({message}).",
                        base_url(url)
                    );
                }
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(self.scaled(Duration::from_secs(5))).await;
            }
        }
        Verdict::Failed(last)
    }

    /// Completes a manual validation (GET or POST on the validationUrl);
    /// `true` if the subscription is now validated.
    pub(crate) async fn complete_manual_validation(
        &self,
        name: &str,
        token: &str,
    ) -> RouterResult<bool> {
        let Some(pending) = self.storage.take_validation(&token_hash(token)).await? else {
            return Ok(false);
        };
        let Some((_, mut sub)) = self
            .router
            .subscription_by_id(&pending.subscription_id)
            .await?
        else {
            return Ok(false);
        };
        if sub.record.name != name {
            return Ok(false);
        }
        if pending.expires_at <= Utc::now().timestamp() {
            self.router
                .set_subscription_state(
                    &mut sub,
                    ProvisioningState::Failed,
                    Some("The manual validation window of 10 minutes passed."),
                )
                .await?;
            return Ok(false);
        }
        self.router
            .set_subscription_state(&mut sub, ProvisioningState::Succeeded, None)
            .await?;
        Ok(true)
    }

    /// Marks subscriptions whose manual validation window closed as Failed.
    pub(crate) async fn expire_manual_validations(&self) -> RouterResult<()> {
        for pending in self
            .storage
            .expired_validations(Utc::now().timestamp())
            .await?
        {
            if let Some((_, mut sub)) = self
                .router
                .subscription_by_id(&pending.subscription_id)
                .await?
                && sub.record.provisioning_state == ProvisioningState::AwaitingManualAction
            {
                self.router
                    .set_subscription_state(
                        &mut sub,
                        ProvisioningState::Failed,
                        Some("The manual validation window of 10 minutes passed."),
                    )
                    .await?;
            }
        }
        Ok(())
    }
}

/// The URL without its query string, which often carries a secret.
pub fn base_url(url: &str) -> String {
    url.split('?').next().unwrap_or_default().to_owned()
}
