//! Producer links: `<hub>` and `<hub>/Partitions/<id>` (A9.6).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use fe2o3_amqp::{
    Delivery, Receiver,
    link::{CreditMode, RecvError, delivery::DeliveryInfo},
    types::{messaging::Body, primitives::Value},
};

use crate::{
    backend::{AppendError, InboundEvent, PartitionTarget, ReadError, Rights},
    codec::{CodecError, encode_message, event_from_encoded, partition_key_of},
    errors,
    session::{LinkInfo, close_receiver},
    state::{Authz, ConnCtx},
};

/// `EventDataBatch` message format (A9.6).
pub(crate) const BATCH_FORMAT: u32 = 0x8001_3700;

pub(crate) fn deadline_of(t: std::time::SystemTime) -> tokio::time::Instant {
    let now = std::time::SystemTime::now();
    let left = t.duration_since(now).unwrap_or(Duration::ZERO);
    // Cap far-away expiries so the Instant arithmetic cannot overflow.
    tokio::time::Instant::now() + left.min(Duration::from_secs(86_400 * 365))
}

async fn validate(
    ctx: &ConnCtx,
    info: &LinkInfo,
    host: Option<String>,
    hub: &str,
    partition: &Option<String>,
) -> Result<(String, String, std::time::SystemTime), errors::AmqpErrorValue> {
    let Some(ns) = host.or_else(|| ctx.namespace()) else {
        return Err(errors::not_found(&info.address));
    };
    let entity = format!("sb://{ns}/{hub}");
    let resource = match partition {
        Some(p) => format!("{entity}/partitions/{p}"),
        None => entity.clone(),
    };
    let until = match ctx.authorize(&resource, Rights::can_send) {
        Authz::Until(t) => t,
        Authz::MissingRight | Authz::NoGrant => {
            return Err(errors::unauthorized_claim("Send", &entity));
        }
    };
    match ctx.shared.backend.hub_properties(&ns, hub).await {
        Ok(p) => {
            if let Some(pid) = partition
                && !p.partition_ids.iter().any(|x| x == pid)
            {
                return Err(errors::not_found(&format!("{entity}/Partitions/{pid}")));
            }
        }
        Err(ReadError::NotFound { entity }) => return Err(errors::not_found(&entity)),
        Err(e) => return Err(errors::internal(&e.to_string())),
    }
    Ok((ns, resource, until))
}

pub(crate) async fn run_producer(
    ctx: Arc<ConnCtx>,
    mut receiver: Receiver,
    info: LinkInfo,
    host: Option<String>,
    hub: String,
    partition: Option<String>,
) {
    let (ns, resource, until) = match validate(&ctx, &info, host, &hub, &partition).await {
        Ok(x) => x,
        Err(err) => {
            let delay = ctx.shared.pacer.on_failure(ctx.peer.ip(), &info.address);
            return close_receiver(&ctx, receiver, &info, err, delay).await;
        }
    };
    let credit = ctx.shared.limits.producer_credit.max(1000);
    receiver.set_credit_mode(CreditMode::Manual);
    if receiver.set_credit(credit).await.is_err() {
        return;
    }
    tracing::info!(peer = %ctx.peer, link = info.name, address = info.address, "producer link attached");

    let mut grants = ctx.grants_version.subscribe();
    let expiry = tokio::time::sleep_until(deadline_of(until));
    tokio::pin!(expiry);
    let target_partition = partition.clone();
    let reason: Result<&str, errors::AmqpErrorValue> = loop {
        let r: Result<Delivery<Body<Value>>, RecvError> = tokio::select! {
            r = receiver.recv() => r,
            _ = &mut expiry => {
                match ctx.authorize(&resource, Rights::can_send) {
                    Authz::Until(t) => { expiry.as_mut().reset(deadline_of(t)); continue; }
                    _ => break Err(errors::unauthorized("The token has expired.")),
                }
            }
            _ = grants.changed() => {
                if let Authz::Until(t) = ctx.authorize(&resource, Rights::can_send) {
                    expiry.as_mut().reset(deadline_of(t));
                }
                continue;
            }
            _ = ctx.shared.shutdown.cancelled() => break Ok("server shutdown"),
        };
        let delivery = match r {
            Ok(d) => d,
            Err(RecvError::MessageDecode(e)) => {
                let _ = receiver
                    .reject(
                        e.info,
                        errors::decode_error("The message could not be decoded."),
                    )
                    .await;
                continue;
            }
            Err(RecvError::TransferLimitExceeded) => {
                // fe2o3 dropped a transfer beyond credit; the pyamqp sender
                // ignores credit, so keep the link and top the credit up.
                tracing::warn!(peer = %ctx.peer, link = info.name, "transfer beyond credit dropped");
                let _ = receiver.set_credit(credit).await;
                continue;
            }
            Err(e) => {
                tracing::info!(peer = %ctx.peer, link = info.name, address = info.address, reason = %e, "producer link detached");
                return;
            }
        };
        if receiver.credit() < credit - credit / 4 && receiver.set_credit(credit).await.is_err() {
            return;
        }
        let dinfo = DeliveryInfo::from(&delivery);
        let format = delivery.message_format().unwrap_or(0);
        let size_hint = ctx.shared.limits.max_message_size as usize;
        let (events, key) = match decode_events(delivery, format) {
            Ok(x) => x,
            Err(e) => {
                let _ = receiver
                    .reject(dinfo, errors::decode_error(&e.to_string()))
                    .await;
                continue;
            }
        };
        if events.is_empty() {
            let _ = receiver
                .reject(dinfo, errors::argument_error("The batch holds no event."))
                .await;
            continue;
        }
        let target = match (&target_partition, key) {
            (Some(p), _) => PartitionTarget::Partition(p.clone()),
            (None, Some(k)) => PartitionTarget::Key(k),
            (None, None) => PartitionTarget::Any,
        };
        match ctx.shared.backend.append(&ns, &hub, target, events).await {
            Ok(_) => {
                if receiver.accept(dinfo).await.is_err() {
                    return;
                }
            }
            Err(AppendError::NotFound { entity }) => {
                let _ = receiver.reject(dinfo, errors::not_found(&entity)).await;
            }
            Err(AppendError::TooLarge { size, max }) => {
                let _ = receiver
                    .reject(
                        dinfo,
                        errors::message_size_exceeded(size, max.min(size_hint)),
                    )
                    .await;
            }
            Err(AppendError::Invalid(t)) => {
                let _ = receiver.reject(dinfo, errors::argument_error(&t)).await;
            }
            Err(AppendError::Throttled(t)) => break Err(errors::server_busy(&t)),
            Err(AppendError::Internal(t)) => break Err(errors::internal(&t)),
        }
    };
    match reason {
        Ok(why) => {
            tracing::info!(peer = %ctx.peer, link = info.name, address = info.address, reason = why, "producer link detached");
            let _ = tokio::time::timeout(Duration::from_secs(2), receiver.close()).await;
        }
        Err(err) => close_receiver(&ctx, receiver, &info, err, Duration::ZERO).await,
    }
}

/// Unpack a delivery into events; returns the partition key that picks the
/// partition (the outer `x-opt-partition-key` of a batch).
fn decode_events(
    delivery: Delivery<Body<Value>>,
    format: u32,
) -> Result<(Vec<InboundEvent>, Option<String>), CodecError> {
    let msg = delivery.into_message();
    if format == BATCH_FORMAT {
        let outer_key = partition_key_of(&msg);
        match msg.body {
            Body::Data(batch) => {
                let events = batch
                    .into_inner()
                    .into_iter()
                    .map(|d| event_from_encoded(Bytes::from(d.0.into_vec()), outer_key.as_deref()))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((events, outer_key))
            }
            _ => Err(CodecError(
                "a batch message must carry data sections".into(),
            )),
        }
    } else {
        let ev = event_from_encoded(encode_message(msg)?, None)?;
        let key = ev.partition_key.clone();
        Ok((vec![ev], key))
    }
}
