//! A small Event Hubs-style AMQP client on fe2o3-amqp, for tests and probes.
#![allow(dead_code, unreachable_pub)]

use std::{net::SocketAddr, sync::Arc, time::Duration};

use fe2o3_amqp::{
    Connection, Delivery, Receiver, Sendable, Sender, Session,
    connection::ConnectionHandle,
    link::receiver::CreditMode,
    sasl_profile::SaslProfile,
    session::SessionHandle,
    types::{
        definitions::Fields,
        messaging::{
            AmqpValue, ApplicationProperties, Batch, Body, Data, Message, MessageAnnotations,
            Properties, Source, annotations::OwnedKey, message::__private::Serializable,
        },
        primitives::{Binary, OrderedMap, SimpleValue, Symbol, Value},
    },
};
use serde::Serialize;
use tokio::net::TcpStream;

use super::{KEY, KEY_NAME, MemBackend};
use herald_amqp::{AmqpListener, HubsBackend, Limits, ListenerConfig};

pub const BATCH_FORMAT: u32 = 0x8001_3700;

/// Start a plaintext listener on 127.0.0.1:0 over `backend`.
pub async fn start(
    backend: Arc<MemBackend>,
    limits: Limits,
) -> (
    SocketAddr,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let b: Arc<dyn HubsBackend> = backend;
    let config = ListenerConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        limits,
    };
    let l = AmqpListener::bind(config, b, shutdown.clone())
        .await
        .unwrap();
    let addr = l.local_addr().unwrap();
    let h = tokio::spawn(l.serve());
    (addr, shutdown, h)
}

pub struct Client {
    pub conn: ConnectionHandle<()>,
    pub session: SessionHandle<()>,
    pub host: String,
    cbs: Option<(Sender, Receiver)>,
    next_id: u64,
}

pub fn sym(s: &str) -> OwnedKey {
    OwnedKey::Symbol(Symbol::from(s))
}

impl Client {
    pub async fn connect(addr: SocketAddr, host: &str) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let conn = Connection::builder()
            .container_id(format!("test-{}", uuid::Uuid::new_v4()))
            .hostname(host)
            .sasl_profile(SaslProfile::Anonymous)
            .max_frame_size(1024 * 1024)
            .open_with_stream(stream)
            .await
            .unwrap();
        let mut conn = conn;
        let session = Session::begin(&mut conn).await.unwrap();
        Client {
            conn,
            session,
            host: host.to_string(),
            cbs: None,
            next_id: 0,
        }
    }

    pub fn audience(&self, path: &str) -> String {
        format!("sb://{}/{}", self.host, path)
    }

    /// Request/response on a node. With `reply_to`, the reply link's
    /// target is that address (fe2o3-amqp-cbs style); else the node name.
    pub async fn request(
        &mut self,
        node: &str,
        reply_to: Option<&str>,
        app: Vec<(&str, SimpleValue)>,
        body: Value,
    ) -> (i32, String, Message<Body<Value>>) {
        let reply_target = reply_to.unwrap_or(node).to_string();
        let sender = Sender::attach(
            &mut self.session,
            format!("{node}-sender-{}", self.next_id),
            node,
        )
        .await
        .unwrap();
        let receiver = Receiver::builder()
            .name(format!("{node}-receiver-{}", self.next_id))
            .source(node)
            .target(reply_target.as_str())
            .attach(&mut self.session)
            .await
            .unwrap();
        self.next_id += 1;
        let (status, desc, msg) = Self::exchange(sender, receiver, reply_to, app, body).await;
        (status, desc, msg)
    }

    async fn exchange(
        mut sender: Sender,
        mut receiver: Receiver,
        reply_to: Option<&str>,
        app: Vec<(&str, SimpleValue)>,
        body: Value,
    ) -> (i32, String, Message<Body<Value>>) {
        let mut ap = OrderedMap::new();
        for (k, v) in app {
            ap.insert(k.to_string(), v);
        }
        let id = uuid::Uuid::new_v4().to_string();
        let msg = Message {
            header: None,
            delivery_annotations: None,
            message_annotations: None,
            properties: Some(Properties {
                message_id: Some(id.clone().into()),
                reply_to: reply_to.map(str::to_string),
                ..Default::default()
            }),
            application_properties: Some(ApplicationProperties(ap)),
            body: Body::Value(AmqpValue(body)),
            footer: None,
        };
        let outcome = sender.send(msg).await.unwrap();
        assert!(outcome.is_accepted(), "{outcome:?}");
        let d: Delivery<Body<Value>> =
            tokio::time::timeout(Duration::from_secs(10), receiver.recv())
                .await
                .unwrap()
                .unwrap();
        let _ = receiver.accept(&d).await;
        let m = d.into_message();
        assert_eq!(
            m.properties.as_ref().unwrap().correlation_id,
            Some(id.into())
        );
        let ap = m.application_properties.as_ref().unwrap();
        let status = match ap.0.get("status-code") {
            Some(SimpleValue::Int(n)) => *n,
            other => panic!("status-code {other:?}"),
        };
        let desc = match ap.0.get("status-description") {
            Some(SimpleValue::String(s)) => s.clone(),
            _ => String::new(),
        };
        let _ = sender.close().await;
        let _ = receiver.close().await;
        (status, desc, m)
    }

    pub async fn put_token(&mut self, audience: &str, token: &str) -> i32 {
        self.request(
            "$cbs",
            None,
            vec![
                ("operation", SimpleValue::String("put-token".into())),
                (
                    "type",
                    SimpleValue::String("servicebus.windows.net:sastoken".into()),
                ),
                ("name", SimpleValue::String(audience.into())),
            ],
            Value::String(token.into()),
        )
        .await
        .0
    }

    /// put-token with the root key for `path` (e.g. `hub`).
    pub async fn authorize(&mut self, path: &str) {
        let aud = self.audience(path);
        let token = super::sas_token(&aud, KEY_NAME, KEY, Duration::from_secs(3600));
        assert_eq!(self.put_token(&aud, &token).await, 202);
    }

    pub async fn producer(&mut self, path: &str) -> Sender {
        Sender::builder()
            .name(format!("sender-{}", uuid::Uuid::new_v4()))
            .source(format!("sender-{}", uuid::Uuid::new_v4()))
            .target(format!("amqps://{}/{}", self.host, path))
            .attach(&mut self.session)
            .await
            .unwrap()
    }

    pub async fn consumer(
        &mut self,
        hub: &str,
        partition: &str,
        selector: Option<&str>,
        epoch: Option<i64>,
        credit: u32,
    ) -> Result<Receiver, fe2o3_amqp::link::ReceiverAttachError> {
        let address = format!(
            "amqps://{}/{hub}/ConsumerGroups/$Default/Partitions/{partition}",
            self.host
        );
        let mut source = Source::builder().address(address).build();
        if let Some(sel) = selector {
            let mut fs = OrderedMap::new();
            fs.insert(
                Symbol::from("apache.org:selector-filter:string"),
                Value::Described(Box::new(serde_amqp::described::Described {
                    descriptor: serde_amqp::descriptor::Descriptor::Name(Symbol::from(
                        "apache.org:selector-filter:string",
                    )),
                    value: Value::String(sel.to_string()),
                })),
            );
            source.filter = Some(fs);
        }
        let mut b = Receiver::builder()
            .name(format!("receiver-{}", uuid::Uuid::new_v4()))
            .source(source)
            .target(format!("receiver-{}", uuid::Uuid::new_v4()))
            .credit_mode(CreditMode::Auto(credit));
        if let Some(e) = epoch {
            let mut props = Fields::new();
            props.insert(Symbol::from("com.microsoft:epoch"), Value::Long(e));
            b = b.properties(props);
        }
        b.attach(&mut self.session).await
    }

    pub async fn close(mut self) {
        let _ = self.session.end().await;
        let _ = self.conn.close().await;
    }
}

/// One encoded inner message of an `EventDataBatch`.
pub fn inner_message(body: &[u8], props: &[(&str, SimpleValue)], key: Option<&str>) -> Vec<u8> {
    let ap = if props.is_empty() {
        None
    } else {
        let mut m = OrderedMap::new();
        for (k, v) in props {
            m.insert(k.to_string(), v.clone());
        }
        Some(ApplicationProperties(m))
    };
    let ma = key.map(|k| {
        let mut m = MessageAnnotations::default();
        m.0.insert(sym("x-opt-partition-key"), Value::String(k.to_string()));
        m
    });
    let msg = Message {
        header: None,
        delivery_annotations: None,
        message_annotations: ma,
        properties: None,
        application_properties: ap,
        body: Body::<Value>::Data(Batch::new(vec![Data(Binary::from(body.to_vec()))])),
        footer: None,
    };
    let mut buf = Vec::new();
    let mut ser = serde_amqp::ser::Serializer::new(&mut buf);
    Serializable(&msg).serialize(&mut ser).unwrap();
    buf
}

/// An `EventDataBatch` transfer (format 0x80013700).
pub fn batch(inner: Vec<Vec<u8>>, key: Option<&str>) -> Sendable<Body<Value>> {
    let ma = key.map(|k| {
        let mut m = MessageAnnotations::default();
        m.0.insert(sym("x-opt-partition-key"), Value::String(k.to_string()));
        m
    });
    let msg = Message {
        header: None,
        delivery_annotations: None,
        message_annotations: ma,
        properties: None,
        application_properties: None,
        body: Body::<Value>::Data(Batch::new(
            inner
                .into_iter()
                .map(|b| Data(Binary::from(b)))
                .collect::<Vec<_>>(),
        )),
        footer: None,
    };
    Sendable::builder()
        .message(msg)
        .message_format(BATCH_FORMAT)
        .build()
}

/// A message annotation of a received event.
pub fn annotation<'a>(m: &'a Message<Body<Value>>, key: &str) -> Option<&'a Value> {
    m.message_annotations.as_ref()?.0.get(&sym(key))
}
