//! A small Event Hubs client on fe2o3-amqp: enough for `herald bench` and
//! the listener's tests to speak to Herald the way the SDKs do (SASL
//! ANONYMOUS, `$cbs` put-token, `EventDataBatch` transfers, consumer links
//! with a selector filter). It is not a user-facing SDK; users keep theirs.

use std::time::Duration;

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
use tokio::io::{AsyncRead, AsyncWrite};

/// The message format of an `EventDataBatch` transfer.
pub const BATCH_FORMAT: u32 = 0x8001_3700;

/// Any failure of the client; callers print it.
pub type ClientError = Box<dyn std::error::Error + Send + Sync>;

/// One connection with one session, as an SDK client holds.
pub struct HubClient {
    /// The connection (exposed so tests can close it abruptly).
    pub conn: ConnectionHandle<()>,
    /// The session links are attached on.
    pub session: SessionHandle<()>,
    /// The namespace host name sent in `open` and used in audiences.
    pub host: String,
    next_id: u64,
}

/// A symbol key for message annotations.
pub fn sym(s: &str) -> OwnedKey {
    OwnedKey::Symbol(Symbol::from(s))
}

impl HubClient {
    /// Opens a connection over `stream` (plain TCP or a TLS stream).
    pub async fn connect<S>(stream: S, host: &str) -> Result<Self, ClientError>
    where
        S: AsyncRead + AsyncWrite + std::fmt::Debug + Send + Unpin + 'static,
    {
        let mut conn = Connection::builder()
            .container_id(format!("herald-client-{}", uuid::Uuid::new_v4()))
            .hostname(host)
            .sasl_profile(SaslProfile::Anonymous)
            .max_frame_size(1024 * 1024)
            .open_with_stream(stream)
            .await?;
        let session = Session::begin(&mut conn).await?;
        Ok(HubClient {
            conn,
            session,
            host: host.to_string(),
            next_id: 0,
        })
    }

    /// The audience of an entity path, as the SDKs build it.
    pub fn audience(&self, path: &str) -> String {
        format!("sb://{}/{}", self.host, path)
    }

    /// Request/response on a node (`$cbs`, `$management`). With
    /// `reply_to`, the reply link's target is that address; else the node
    /// name. Returns status code, description and the reply.
    pub async fn request(
        &mut self,
        node: &str,
        reply_to: Option<&str>,
        app: Vec<(&str, SimpleValue)>,
        body: Value,
    ) -> Result<(i32, String, Message<Body<Value>>), ClientError> {
        let reply_target = reply_to.unwrap_or(node).to_string();
        let id = self.next_id;
        self.next_id += 1;
        let mut sender =
            Sender::attach(&mut self.session, format!("{node}-sender-{id}"), node).await?;
        let mut receiver = Receiver::builder()
            .name(format!("{node}-receiver-{id}"))
            .source(node)
            .target(reply_target.as_str())
            .attach(&mut self.session)
            .await?;
        let mut ap = OrderedMap::new();
        for (k, v) in app {
            ap.insert(k.to_string(), v);
        }
        let message_id = uuid::Uuid::new_v4().to_string();
        let msg = Message {
            header: None,
            delivery_annotations: None,
            message_annotations: None,
            properties: Some(Properties {
                message_id: Some(message_id.clone().into()),
                reply_to: reply_to.map(str::to_string),
                ..Default::default()
            }),
            application_properties: Some(ApplicationProperties(ap)),
            body: Body::Value(AmqpValue(body)),
            footer: None,
        };
        let outcome = sender.send(msg).await?;
        if !outcome.is_accepted() {
            return Err(format!("{node} request not accepted: {outcome:?}").into());
        }
        let d: Delivery<Body<Value>> =
            tokio::time::timeout(Duration::from_secs(10), receiver.recv()).await??;
        let _ = receiver.accept(&d).await;
        let m = d.into_message();
        if m.properties.as_ref().and_then(|p| p.correlation_id.clone()) != Some(message_id.into()) {
            return Err(format!("{node} reply has the wrong correlation-id").into());
        }
        let ap = m.application_properties.as_ref();
        let status = match ap.and_then(|a| a.0.get("status-code")) {
            Some(SimpleValue::Int(n)) => *n,
            other => return Err(format!("{node} reply status-code {other:?}").into()),
        };
        let desc = match ap.and_then(|a| a.0.get("status-description")) {
            Some(SimpleValue::String(s)) => s.clone(),
            _ => String::new(),
        };
        let _ = sender.close().await;
        let _ = receiver.close().await;
        Ok((status, desc, m))
    }

    /// `$cbs` put-token of a SAS token for `audience`; returns the status code.
    pub async fn put_token(&mut self, audience: &str, token: &str) -> Result<i32, ClientError> {
        let (status, _, _) = self
            .request(
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
            .await?;
        Ok(status)
    }

    /// A sender link to `path` (`hub` or `hub/Partitions/{p}`).
    pub async fn producer(&mut self, path: &str) -> Result<Sender, ClientError> {
        Ok(Sender::builder()
            .name(format!("sender-{}", uuid::Uuid::new_v4()))
            .source(format!("sender-{}", uuid::Uuid::new_v4()))
            .target(format!("amqps://{}/{}", self.host, path))
            .attach(&mut self.session)
            .await?)
    }

    /// A receiver link on one partition of `hub` in consumer group `group`,
    /// with an optional selector (`amqp.annotation.x-opt-offset > '-1'`),
    /// an optional epoch and auto credit.
    pub async fn consumer(
        &mut self,
        hub: &str,
        group: &str,
        partition: &str,
        selector: Option<&str>,
        epoch: Option<i64>,
        credit: u32,
    ) -> Result<Receiver, fe2o3_amqp::link::ReceiverAttachError> {
        let address = format!(
            "amqps://{}/{hub}/ConsumerGroups/{group}/Partitions/{partition}",
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

    /// Ends the session and closes the connection, ignoring errors.
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
    let msg = Message {
        header: None,
        delivery_annotations: None,
        message_annotations: partition_key(key),
        properties: None,
        application_properties: ap,
        body: Body::<Value>::Data(Batch::new(vec![Data(Binary::from(body.to_vec()))])),
        footer: None,
    };
    let mut buf = Vec::new();
    let mut ser = serde_amqp::ser::Serializer::new(&mut buf);
    // Serializing plain owned values into a Vec cannot fail.
    let _ = Serializable(&msg).serialize(&mut ser);
    buf
}

fn partition_key(key: Option<&str>) -> Option<MessageAnnotations> {
    key.map(|k| {
        let mut m = MessageAnnotations::default();
        m.0.insert(sym("x-opt-partition-key"), Value::String(k.to_string()));
        m
    })
}

/// An `EventDataBatch` transfer (format 0x80013700) of encoded inner messages.
pub fn batch(inner: Vec<Vec<u8>>, key: Option<&str>) -> Sendable<Body<Value>> {
    let msg = Message {
        header: None,
        delivery_annotations: None,
        message_annotations: partition_key(key),
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
