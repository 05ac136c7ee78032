//! One session: accept each incoming attach and hand the link to its task.

use std::{sync::Arc, time::Duration};

use fe2o3_amqp::{
    Receiver, Sender,
    acceptor::{
        LinkAcceptor, LinkEndpoint, ListenerSessionHandle, SupportedReceiverSettleModes,
        SupportedSenderSettleModes,
    },
    types::{
        definitions::{ReceiverSettleMode, Role, SenderSettleMode},
        messaging::{Source, Target, TargetArchetype},
        performatives::Attach,
        primitives::Symbol,
    },
};
use tokio_util::task::TaskTracker;

use crate::{
    address::{LinkAddress, Node, parse_link_address},
    consumer::run_consumer,
    errors::{self, AmqpErrorValue},
    nodes::{NodeKind, NodeRoutes, run_node_receiver, run_node_sender},
    producer::run_producer,
    state::ConnCtx,
};

pub(crate) const RUNTIME_METRIC: &str = "com.microsoft:enable-receiver-runtime-metric";

type Acceptor = LinkAcceptor<fn(Source) -> Option<Source>, fn(Target) -> Option<Target>>;

struct Acceptors {
    /// Client sends, Herald receives (producer links, node requests).
    inbound: Acceptor,
    /// Herald sends pre-settled (consumer links, node replies).
    outbound: Acceptor,
    /// Same, offering the runtime-metric capability.
    outbound_metrics: Acceptor,
}

fn acceptors(max_message_size: u64) -> Acceptors {
    let inbound = LinkAcceptor::builder()
        .supported_receiver_settle_modes(SupportedReceiverSettleModes::First)
        .fallback_receiver_settle_mode(ReceiverSettleMode::First)
        .max_message_size(max_message_size)
        .verify_incoming_source(false)
        .verify_incoming_target(false)
        .build();
    let outbound = LinkAcceptor::builder()
        .supported_sender_settle_modes(SupportedSenderSettleModes::Mixed)
        .fallback_sender_settle_mode(SenderSettleMode::Mixed)
        .verify_incoming_source(false)
        .verify_incoming_target(false)
        .build();
    let outbound_metrics = LinkAcceptor::builder()
        .supported_sender_settle_modes(SupportedSenderSettleModes::Mixed)
        .fallback_sender_settle_mode(SenderSettleMode::Mixed)
        .add_offered_capabilities(Symbol::from(RUNTIME_METRIC))
        .verify_incoming_source(false)
        .verify_incoming_target(false)
        .build();
    Acceptors {
        inbound,
        outbound,
        outbound_metrics,
    }
}

pub(crate) fn source_address(attach: &Attach) -> Option<String> {
    attach.source.as_ref().and_then(|s| s.address.clone())
}

pub(crate) fn target_address(attach: &Attach) -> Option<String> {
    attach.target.as_ref().and_then(|t| {
        let TargetArchetype::Target(t) = t.as_ref();
        t.address.clone()
    })
}

fn wants_capability(attach: &Attach, cap: &str) -> bool {
    attach
        .desired_capabilities
        .as_ref()
        .is_some_and(|caps| caps.0.iter().any(|c| c.as_str() == cap))
}

/// A link as the session hands it to its task.
pub(crate) struct LinkInfo {
    pub(crate) name: String,
    pub(crate) address: String,
    pub(crate) attach: Attach,
}

pub(crate) async fn run_session(ctx: Arc<ConnCtx>, mut session: ListenerSessionHandle) {
    let acceptors = acceptors(ctx.shared.limits.max_message_size);
    let routes = Arc::new(NodeRoutes::default());
    let links = TaskTracker::new();
    while let Some(attach) = session.next_incoming_attach().await {
        let remote_sends = matches!(attach.role, Role::Sender);
        let address = if remote_sends {
            target_address(&attach)
        } else {
            source_address(&attach)
        };
        let address = address.unwrap_or_default();
        let parsed = parse_link_address(&address);
        let metrics = !remote_sends && wants_capability(&attach, RUNTIME_METRIC);
        let acceptor = if remote_sends {
            &acceptors.inbound
        } else if metrics {
            &acceptors.outbound_metrics
        } else {
            &acceptors.outbound
        };
        let info = LinkInfo {
            name: attach.name.clone(),
            address: address.clone(),
            attach: attach.clone(),
        };
        let endpoint = match acceptor.accept_incoming_attach(attach, &mut session).await {
            Ok(e) => e,
            Err(e) => {
                tracing::info!(peer = %ctx.peer, link = info.name, address, error = %e, "attach failed");
                continue;
            }
        };
        let ctx = ctx.clone();
        let routes = routes.clone();
        match (endpoint, parsed) {
            (
                LinkEndpoint::Receiver(rx),
                Some(LinkAddress {
                    node: Node::Cbs, ..
                }),
            ) => {
                links.spawn(run_node_receiver(ctx, routes, NodeKind::Cbs, rx, info));
            }
            (
                LinkEndpoint::Receiver(rx),
                Some(LinkAddress {
                    node: Node::Management,
                    ..
                }),
            ) => {
                links.spawn(run_node_receiver(
                    ctx,
                    routes,
                    NodeKind::Management,
                    rx,
                    info,
                ));
            }
            (
                LinkEndpoint::Sender(tx),
                Some(LinkAddress {
                    node: Node::Cbs, ..
                }),
            ) => {
                links.spawn(run_node_sender(ctx, routes, NodeKind::Cbs, tx, info));
            }
            (
                LinkEndpoint::Sender(tx),
                Some(LinkAddress {
                    node: Node::Management,
                    ..
                }),
            ) => {
                links.spawn(run_node_sender(ctx, routes, NodeKind::Management, tx, info));
            }
            (
                LinkEndpoint::Receiver(rx),
                Some(LinkAddress {
                    host,
                    node: Node::Hub { hub, partition },
                }),
            ) => {
                links.spawn(run_producer(ctx, rx, info, host, hub, partition));
            }
            (
                LinkEndpoint::Sender(tx),
                Some(LinkAddress {
                    host,
                    node:
                        Node::Consumer {
                            hub,
                            consumer_group,
                            partition,
                        },
                }),
            ) => {
                links.spawn(run_consumer(
                    ctx,
                    tx,
                    info,
                    host,
                    hub,
                    consumer_group,
                    partition,
                    metrics,
                ));
            }
            (endpoint, parsed) => {
                let err = match parsed {
                    None => errors::not_found(&address),
                    Some(_) => errors::invalid_field(&format!(
                        "The address '{address}' cannot be used in this direction."
                    )),
                };
                links.spawn(refuse(ctx, endpoint, info, err));
            }
        }
    }
    links.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), links.wait()).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), session.end()).await;
}

async fn refuse(ctx: Arc<ConnCtx>, endpoint: LinkEndpoint, info: LinkInfo, err: AmqpErrorValue) {
    let delay = ctx.shared.pacer.on_failure(ctx.peer.ip(), &info.address);
    match endpoint {
        LinkEndpoint::Sender(s) => close_sender(&ctx, s, &info, err, delay).await,
        LinkEndpoint::Receiver(r) => close_receiver(&ctx, r, &info, err, delay).await,
    }
}

fn condition_text(err: &AmqpErrorValue) -> String {
    format!("{:?}", err.condition)
}

/// Detach a Herald-side sender with an error (after `delay`, for pacing).
pub(crate) async fn close_sender(
    ctx: &ConnCtx,
    s: Sender,
    info: &LinkInfo,
    err: AmqpErrorValue,
    delay: Duration,
) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    tracing::info!(peer = %ctx.peer, link = info.name, address = info.address, condition = condition_text(&err), "link detached");
    let _ = tokio::time::timeout(Duration::from_secs(5), s.close_with_error(err)).await;
}

/// Detach a Herald-side receiver with an error (after `delay`, for pacing).
pub(crate) async fn close_receiver(
    ctx: &ConnCtx,
    r: Receiver,
    info: &LinkInfo,
    err: AmqpErrorValue,
    delay: Duration,
) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    tracing::info!(peer = %ctx.peer, link = info.name, address = info.address, condition = condition_text(&err), "link detached");
    let _ = tokio::time::timeout(Duration::from_secs(5), r.close_with_error(err)).await;
}
