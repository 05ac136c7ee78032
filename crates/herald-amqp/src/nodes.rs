//! The `$cbs` (put-token) and `$management` (READ) request/response nodes.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use fe2o3_amqp::{
    Delivery, Receiver, Sendable, Sender,
    link::delivery::DeliveryInfo,
    types::{
        messaging::{AmqpValue, ApplicationProperties, Body, Message, Properties},
        primitives::{Array, OrderedMap, SimpleValue, Timestamp, Value},
    },
};
use tokio::sync::mpsc;

use crate::{
    address::{covers, normalize_resource, uri_host},
    backend::{AuthError, ReadError},
    session::{LinkInfo, source_address, target_address},
    state::{Authz, ConnCtx},
};

/// Which node a link belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeKind {
    Cbs,
    Management,
}

impl NodeKind {
    fn name(self) -> &'static str {
        match self {
            NodeKind::Cbs => "$cbs",
            NodeKind::Management => "$management",
        }
    }
}

type Reply = Message<Body<Value>>;

struct Route {
    id: u64,
    kind: NodeKind,
    source: String,
    target: String,
    tx: mpsc::Sender<Reply>,
}

/// Reply links of one session.
#[derive(Default)]
pub(crate) struct NodeRoutes {
    next: AtomicU64,
    routes: Mutex<Vec<Route>>,
}

impl NodeRoutes {
    fn add(&self, kind: NodeKind, source: String, target: String, tx: mpsc::Sender<Reply>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut r) = self.routes.lock() {
            r.push(Route {
                id,
                kind,
                source,
                target,
                tx,
            });
        }
        id
    }

    fn remove(&self, id: u64) {
        if let Ok(mut r) = self.routes.lock() {
            r.retain(|x| x.id != id);
        }
    }

    /// With `reply-to`: the receiver link whose target is it. Without: the
    /// receiver link of the node whose source is the node (A9.4).
    fn find(&self, kind: NodeKind, reply_to: Option<&str>) -> Option<mpsc::Sender<Reply>> {
        let r = self.routes.lock().ok()?;
        if let Some(to) = reply_to
            && let Some(x) = r.iter().rev().find(|x| x.target == to)
        {
            return Some(x.tx.clone());
        }
        r.iter()
            .rev()
            .find(|x| x.kind == kind && x.source.eq_ignore_ascii_case(kind.name()))
            .or_else(|| r.iter().rev().find(|x| x.kind == kind))
            .map(|x| x.tx.clone())
    }
}

/// A reply link (the client's receiver on the node).
pub(crate) async fn run_node_sender(
    ctx: Arc<ConnCtx>,
    routes: Arc<NodeRoutes>,
    kind: NodeKind,
    mut sender: Sender,
    info: LinkInfo,
) {
    let (tx, mut rx) = mpsc::channel::<Reply>(64);
    let source = source_address(&info.attach).unwrap_or_default();
    let target = target_address(&info.attach).unwrap_or_default();
    let id = routes.add(kind, source, target.clone(), tx);
    tracing::debug!(peer = %ctx.peer, link = info.name, node = kind.name(), target, "node reply link attached");
    let mut remote_detached = false;
    loop {
        tokio::select! {
            m = rx.recv() => {
                let Some(m) = m else { break };
                let sendable = Sendable::builder().message(m).settled(true).build();
                if let Err(e) = sender.send(sendable).await {
                    tracing::debug!(peer = %ctx.peer, error = %e, "node reply failed");
                    break;
                }
            }
            _ = sender.on_detach() => {
                remote_detached = true;
                break;
            }
            _ = ctx.shared.shutdown.cancelled() => break,
        }
    }
    routes.remove(id);
    if !remote_detached {
        let _ = tokio::time::timeout(Duration::from_secs(2), sender.close()).await;
    }
    tracing::debug!(peer = %ctx.peer, link = info.name, node = kind.name(), "node reply link detached");
}

/// A request link (the client's sender on the node).
pub(crate) async fn run_node_receiver(
    ctx: Arc<ConnCtx>,
    routes: Arc<NodeRoutes>,
    kind: NodeKind,
    mut receiver: Receiver,
    info: LinkInfo,
) {
    tracing::debug!(peer = %ctx.peer, link = info.name, node = kind.name(), "node request link attached");
    loop {
        let r: Result<Delivery<Body<Value>>, _> = tokio::select! {
            r = receiver.recv() => r,
            _ = ctx.shared.shutdown.cancelled() => break,
        };
        let delivery = match r {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(peer = %ctx.peer, error = %e, "node request link ended");
                break;
            }
        };
        let dinfo = DeliveryInfo::from(&delivery);
        let request = delivery.into_message();
        let message_id = request
            .properties
            .as_ref()
            .and_then(|p| p.message_id.clone());
        let reply_to = request.properties.as_ref().and_then(|p| p.reply_to.clone());
        let (status, description, body) = match kind {
            NodeKind::Cbs => handle_cbs(&ctx, &request).await,
            NodeKind::Management => handle_management(&ctx, &request).await,
        };
        if receiver.accept(dinfo).await.is_err() {
            break;
        }
        let mut ap = OrderedMap::new();
        ap.insert("status-code".to_string(), SimpleValue::Int(status));
        ap.insert(
            "status-description".to_string(),
            SimpleValue::String(description.clone()),
        );
        if kind == NodeKind::Management {
            ap.insert(
                "statusDescription".to_string(),
                SimpleValue::String(description),
            );
        }
        let reply = Message {
            header: None,
            delivery_annotations: None,
            message_annotations: None,
            properties: Some(Properties {
                correlation_id: message_id,
                ..Default::default()
            }),
            application_properties: Some(ApplicationProperties(ap)),
            body: Body::Value(AmqpValue(body)),
            footer: None,
        };
        match routes.find(kind, reply_to.as_deref()) {
            Some(tx) => {
                let _ = tx.send(reply).await;
            }
            None => {
                tracing::info!(peer = %ctx.peer, node = kind.name(), "no reply link for a node request")
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), receiver.close()).await;
    tracing::debug!(peer = %ctx.peer, link = info.name, node = kind.name(), "node request link detached");
}

fn app_string(msg: &Message<Body<Value>>, key: &str) -> Option<String> {
    match msg.application_properties.as_ref()?.0.get(key)? {
        SimpleValue::String(s) => Some(s.clone()),
        SimpleValue::Symbol(s) => Some(s.0.clone()),
        _ => None,
    }
}

fn body_string(msg: &Message<Body<Value>>) -> Option<String> {
    match &msg.body {
        Body::Value(AmqpValue(Value::String(s))) => Some(s.clone()),
        Body::Value(AmqpValue(Value::Binary(b))) => String::from_utf8(b.to_vec()).ok(),
        Body::Data(batch) => batch
            .iter()
            .next()
            .and_then(|d| String::from_utf8(d.0.to_vec()).ok()),
        _ => None,
    }
}

async fn handle_cbs(ctx: &ConnCtx, msg: &Message<Body<Value>>) -> (i32, String, Value) {
    let op = app_string(msg, "operation").unwrap_or_default();
    if op != "put-token" {
        return (400, format!("Unsupported operation '{op}'."), Value::Null);
    }
    let (Some(audience), Some(token)) = (app_string(msg, "name"), body_string(msg)) else {
        return (
            400,
            "put-token needs 'name' and a token body.".into(),
            Value::Null,
        );
    };
    let Some(ns) = uri_host(&audience).or_else(|| ctx.namespace()) else {
        return (400, "The audience names no namespace.".into(), Value::Null);
    };
    match ctx
        .shared
        .backend
        .authorize(&ns, &audience, &token, SystemTime::now())
        .await
    {
        Ok(grant) => {
            ctx.add_grant(&grant);
            tracing::debug!(peer = %ctx.peer, audience, resource = grant.resource, "CBS token accepted");
            (202, "Accepted".into(), Value::Null)
        }
        Err(e) => {
            tracing::info!(peer = %ctx.peer, audience, error = %e, "CBS token refused");
            match e {
                AuthError::Internal(_) => (500, "Internal error.".into(), Value::Null),
                AuthError::Expired => (401, "The token has expired.".into(), Value::Null),
                AuthError::Unauthorized(t) => (401, t, Value::Null),
            }
        }
    }
}

fn put(map: &mut OrderedMap<Value, Value>, k: &str, v: Value) {
    map.insert(Value::String(k.to_string()), v);
}

async fn handle_management(ctx: &ConnCtx, msg: &Message<Body<Value>>) -> (i32, String, Value) {
    let op = app_string(msg, "operation").unwrap_or_default();
    if op != "READ" {
        return (400, format!("Unsupported operation '{op}'."), Value::Null);
    }
    let Some(hub) = app_string(msg, "name") else {
        return (400, "The request needs a 'name'.".into(), Value::Null);
    };
    let Some(ns) = ctx.namespace() else {
        return (
            401,
            "No namespace: put a token on $cbs first.".into(),
            Value::Null,
        );
    };
    let resource = format!("sb://{ns}/{hub}");
    let mut allowed = matches!(ctx.authorize(&resource, |r| r.any()), Authz::Until(_));
    if !allowed
        && let Some(token) = app_string(msg, "security_token")
        && let Ok(g) = ctx
            .shared
            .backend
            .authorize(&ns, &resource, &token, SystemTime::now())
            .await
    {
        allowed = g.rights.any()
            && covers(
                &normalize_resource(&g.resource),
                &normalize_resource(&resource),
            );
    }
    if !allowed {
        return (
            401,
            format!("Unauthorized access to '{resource}'."),
            Value::Null,
        );
    }
    let not_found = |e: ReadError| match e {
        ReadError::NotFound { entity } => (
            404,
            format!(
                "The messaging entity '{entity}' could not be found. To know more visit https://aka.ms/sbResourceMgrExceptions."
            ),
            Value::Null,
        ),
        ReadError::SequenceOutOfRange { .. } => (400, "Bad request.".into(), Value::Null),
        ReadError::Internal(_) => (500, "Internal error.".into(), Value::Null),
    };
    let ty = app_string(msg, "type").unwrap_or_default();
    match ty.as_str() {
        "com.microsoft:eventhub" => match ctx.shared.backend.hub_properties(&ns, &hub).await {
            Ok(p) => {
                let mut m = OrderedMap::new();
                put(&mut m, "name", Value::String(p.name));
                put(&mut m, "type", Value::String(ty.clone()));
                put(
                    &mut m,
                    "created_at",
                    Value::Timestamp(Timestamp::from_milliseconds(p.created_at_ms)),
                );
                put(
                    &mut m,
                    "partition_count",
                    Value::Int(p.partition_ids.len() as i32),
                );
                put(
                    &mut m,
                    "partition_ids",
                    Value::Array(Array::from(
                        p.partition_ids
                            .into_iter()
                            .map(Value::String)
                            .collect::<Vec<_>>(),
                    )),
                );
                (200, "OK".into(), Value::Map(m))
            }
            Err(e) => not_found(e),
        },
        "com.microsoft:partition" => {
            let Some(partition) = app_string(msg, "partition") else {
                return (400, "The request needs a 'partition'.".into(), Value::Null);
            };
            match ctx
                .shared
                .backend
                .partition_properties(&ns, &hub, &partition)
                .await
            {
                Ok(p) => {
                    let mut m = OrderedMap::new();
                    put(&mut m, "name", Value::String(p.hub));
                    put(&mut m, "type", Value::String(ty.clone()));
                    put(&mut m, "partition", Value::String(p.partition));
                    put(
                        &mut m,
                        "begin_sequence_number",
                        Value::Long(p.begin_sequence_number),
                    );
                    put(
                        &mut m,
                        "last_enqueued_sequence_number",
                        Value::Long(p.last_enqueued_sequence_number),
                    );
                    put(
                        &mut m,
                        "last_enqueued_offset",
                        Value::String(p.last_enqueued_offset),
                    );
                    put(
                        &mut m,
                        "last_enqueued_time_utc",
                        Value::Timestamp(Timestamp::from_milliseconds(p.last_enqueued_time_ms)),
                    );
                    put(&mut m, "is_partition_empty", Value::Bool(p.is_empty));
                    put(
                        &mut m,
                        "last_enqueued_sequence_number_epoch",
                        Value::Long(-1),
                    );
                    put(&mut m, "begin_sequence_number_epoch", Value::Long(-1));
                    (200, "OK".into(), Value::Map(m))
                }
                Err(e) => not_found(e),
            }
        }
        _ => (400, format!("Unsupported type '{ty}'."), Value::Null),
    }
}
