//! Consumer links: `<hub>/ConsumerGroups/<cg>/Partitions/<id>` (A9.7).

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use fe2o3_amqp::{
    Sendable, Sender,
    types::{
        performatives::Attach,
        primitives::{Symbol, Value},
    },
};
use serde_amqp::descriptor::Descriptor;

use crate::{
    backend::{ReadError, Rights},
    codec::{RuntimeInfo, outbound_message},
    errors::{self, AmqpErrorValue},
    position::{EventPosition, parse_selector},
    producer::deadline_of,
    session::{LinkInfo, close_sender},
    state::{Authz, ConnCtx, ReaderLease, ReaderRefusal, ReaderRegistry},
};

const SELECTOR: &str = "apache.org:selector-filter:string";
const SELECTOR_CODE: u64 = 0x0000_468C_0000_0004;
const EPOCH: &str = "com.microsoft:epoch";

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Symbol(s) => Some(s.0.clone()),
        Value::Binary(b) => String::from_utf8(b.to_vec()).ok(),
        _ => None,
    }
}

/// The start position from the source filter-set (no filter = earliest).
pub(crate) fn position_of(attach: &Attach) -> Result<EventPosition, String> {
    let Some(filters) = attach.source.as_ref().and_then(|s| s.filter.as_ref()) else {
        return Ok(EventPosition::Earliest);
    };
    for (key, value) in filters.iter() {
        let by_key = key.as_str() == SELECTOR;
        let text = match value {
            Value::Described(d) => {
                let by_desc = match &d.descriptor {
                    Descriptor::Name(n) => n.as_str() == SELECTOR,
                    Descriptor::Code(c) => *c == SELECTOR_CODE,
                };
                if by_key || by_desc {
                    value_text(&d.value)
                } else {
                    None
                }
            }
            other if by_key => value_text(other),
            _ => None,
        };
        if let Some(t) = text {
            return parse_selector(&t);
        }
    }
    Ok(EventPosition::Earliest)
}

/// `com.microsoft:epoch` from the link properties.
pub(crate) fn epoch_of(attach: &Attach) -> Option<i64> {
    let v = attach.properties.as_ref()?.get(&Symbol::from(EPOCH))?;
    match v {
        Value::Long(n) => Some(*n),
        Value::Int(n) => Some(*n as i64),
        Value::Short(n) => Some(*n as i64),
        Value::Byte(n) => Some(*n as i64),
        Value::Uint(n) => Some(*n as i64),
        Value::Ulong(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

fn ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct Reader {
    ns: String,
    resource: String,
    start: i64,
    until: SystemTime,
    lease: ReaderLease,
    watch: tokio::sync::watch::Receiver<i64>,
}

#[allow(clippy::too_many_arguments)]
async fn validate(
    ctx: &Arc<ConnCtx>,
    info: &LinkInfo,
    host: Option<String>,
    hub: &str,
    cg: &str,
    partition: &str,
) -> Result<Reader, AmqpErrorValue> {
    let Some(ns) = host.or_else(|| ctx.namespace()) else {
        return Err(errors::not_found(&info.address));
    };
    let entity = format!("sb://{ns}/{hub}");
    let resource = format!("{entity}/consumergroups/{cg}/partitions/{partition}");
    let until = match ctx.authorize(&resource, Rights::can_listen) {
        Authz::Until(t) => t,
        _ => return Err(errors::unauthorized_claim("Listen", &resource)),
    };
    let position = position_of(&info.attach).map_err(|e| errors::argument_error(&e))?;
    let backend = &ctx.shared.backend;
    let read_err = |e: ReadError| match e {
        ReadError::NotFound { entity } => errors::not_found(&entity),
        ReadError::SequenceOutOfRange { requested, last } => errors::out_of_range(requested, last),
        ReadError::Internal(t) => errors::internal(&t),
    };
    let start = backend
        .resolve_position(&ns, hub, cg, partition, &position)
        .await
        .map_err(read_err)?;
    let watch = backend.watch(&ns, hub, partition).await.map_err(read_err)?;
    let epoch = epoch_of(&info.attach);
    let lease = ReaderRegistry::register(&ctx.shared, &ns, hub, cg, partition, epoch).map_err(|r| match r {
        ReaderRefusal::LowerEpoch { current } => errors::stolen(&format!(
            "Receiver with epoch '{}' cannot be created because a receiver with a higher epoch '{current}' already exists.",
            epoch.unwrap_or_default()
        )),
        ReaderRefusal::EpochReaderExists { current } => errors::stolen(&format!(
            "A receiver with epoch '{current}' already exists; a receiver without an epoch cannot be created."
        )),
        ReaderRefusal::TooMany => errors::resource_limit(&format!(
            "Exceeded the maximum number of allowed receivers per partition in a consumer group which is {}.",
            ctx.shared.limits.max_readers_per_partition
        )),
    })?;
    Ok(Reader {
        ns,
        resource,
        start,
        until,
        lease,
        watch,
    })
}

enum Stop {
    /// Detach with this error.
    Error(AmqpErrorValue),
    /// The client detached or the session ended.
    Remote(String),
    /// Listener shutdown.
    Shutdown,
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_consumer(
    ctx: Arc<ConnCtx>,
    mut sender: Sender,
    info: LinkInfo,
    host: Option<String>,
    hub: String,
    cg: String,
    partition: String,
    metrics: bool,
) {
    let mut reader = match validate(&ctx, &info, host, &hub, &cg, &partition).await {
        Ok(r) => r,
        Err(err) => {
            let delay = ctx.shared.pacer.on_failure(ctx.peer.ip(), &info.address);
            return close_sender(&ctx, sender, &info, err, delay).await;
        }
    };
    tracing::info!(
        peer = %ctx.peer, link = info.name, address = info.address, start = reader.start,
        epoch = epoch_of(&info.attach), "consumer link attached"
    );
    let backend = ctx.shared.backend.clone();
    let stolen = reader.lease.stolen.clone();
    let shutdown = ctx.shared.shutdown.clone();
    let expiry = tokio::time::sleep_until(deadline_of(reader.until));
    tokio::pin!(expiry);
    let mut grants = ctx.grants_version.subscribe();
    let batch = ctx.shared.limits.read_batch.max(1);
    let mut next = reader.start;
    let stolen_err = || {
        errors::stolen(
            "New receiver with higher epoch is created hence current receiver is getting disconnected. If you are recreating the receiver, make sure a higher epoch is used.",
        )
    };

    let stop: Stop = 'outer: loop {
        let available = *reader.watch.borrow_and_update();
        if available <= next {
            tokio::select! {
                c = reader.watch.changed() => {
                    if c.is_err() {
                        break Stop::Error(errors::not_found(&format!("sb://{}/{hub}/Partitions/{partition}", reader.ns)));
                    }
                }
                d = sender.on_detach() => break Stop::Remote(d.to_string()),
                _ = stolen.cancelled() => break Stop::Error(stolen_err()),
                _ = shutdown.cancelled() => break Stop::Shutdown,
                _ = &mut expiry => match ctx.authorize(&reader.resource, Rights::can_listen) {
                    Authz::Until(t) => expiry.as_mut().reset(deadline_of(t)),
                    _ => break Stop::Error(errors::unauthorized("The token has expired.")),
                },
                _ = grants.changed() => {
                    if let Authz::Until(t) = ctx.authorize(&reader.resource, Rights::can_listen) {
                        expiry.as_mut().reset(deadline_of(t));
                    }
                }
            }
            continue;
        }
        let events = tokio::select! {
            r = backend.read(&reader.ns, &hub, &cg, &partition, next, batch) => r,
            _ = stolen.cancelled() => break Stop::Error(stolen_err()),
            _ = shutdown.cancelled() => break Stop::Shutdown,
        };
        let events = match events {
            Ok(e) => e,
            Err(ReadError::NotFound { entity }) => break Stop::Error(errors::not_found(&entity)),
            Err(e) => break Stop::Error(errors::internal(&e.to_string())),
        };
        if events.is_empty() {
            // Nothing readable below `available` (retention moved on):
            // wait for the next append instead of spinning.
            next = available;
            continue;
        }
        let runtime = if metrics {
            match backend
                .partition_properties(&reader.ns, &hub, &partition)
                .await
            {
                Ok(p) => Some(RuntimeInfo {
                    last_sequence_number: p.last_enqueued_sequence_number,
                    last_offset: p.last_enqueued_offset,
                    last_enqueued_time_ms: p.last_enqueued_time_ms,
                    retrieval_time_ms: ms_now(),
                }),
                Err(_) => None,
            }
        } else {
            None
        };
        // One select per read batch (not per event): the send loop runs
        // until the batch is out, while stealing, shutdown and token expiry
        // still interrupt a send that waits for credit.
        let send_all = async {
            for ev in &events {
                let seq = ev.sequence_number;
                match outbound_message(ev, runtime.as_ref()) {
                    Ok(msg) => {
                        let sendable = Sendable::builder().message(msg).settled(true).build();
                        sender
                            .send_batchable(sendable)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    Err(e) => {
                        tracing::warn!(peer = %ctx.peer, sequence_number = seq, error = %e, "stored event cannot be encoded; skipped");
                    }
                }
                next = seq + 1;
            }
            Ok::<(), String>(())
        };
        tokio::select! {
            r = send_all => {
                if let Err(e) = r {
                    break 'outer Stop::Remote(e);
                }
            }
            _ = stolen.cancelled() => break 'outer Stop::Error(stolen_err()),
            _ = shutdown.cancelled() => break 'outer Stop::Shutdown,
            // Events not sent yet are read again from `next`.
            _ = &mut expiry => match ctx.authorize(&reader.resource, Rights::can_listen) {
                Authz::Until(t) => expiry.as_mut().reset(deadline_of(t)),
                _ => break 'outer Stop::Error(errors::unauthorized("The token has expired.")),
            },
        }
    };
    drop(reader);
    match stop {
        Stop::Error(err) => close_sender(&ctx, sender, &info, err, Duration::ZERO).await,
        Stop::Remote(why) => {
            tracing::info!(peer = %ctx.peer, link = info.name, address = info.address, reason = why, "consumer link detached");
        }
        Stop::Shutdown => {
            tracing::info!(peer = %ctx.peer, link = info.name, address = info.address, reason = "server shutdown", "consumer link detached");
            let _ = tokio::time::timeout(Duration::from_secs(2), sender.close()).await;
        }
    }
}
