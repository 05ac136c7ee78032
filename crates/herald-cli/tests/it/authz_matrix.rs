//! The authorization matrix: every route of the server, called with no
//! token, a wrong token, a job token, a principal's token without the
//! permission and with it, and the route's own credential (the admin token,
//! a SAS key, a webhook's URL token, a job token, or nothing for public
//! routes). The expected status of every cell is written down here.
//!
//! The route list is read from the server's source (`.route(` calls under
//! `crates/herald-server/src/api`), so a route added without a row here
//! fails [`every_route_has_a_row`]: nobody ships a route whose
//! authorization nobody wrote down.
//!
//! State-changing rows aim at names that do not exist, so a call that is
//! authorized answers 404 instead of changing what later rows see; a 404
//! in an authorized column is the proof that authorization let it through.

use crate::helpers::*;
use crate::identity::{VAULT_SCOPE, principal, token_for};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;

/// Which server plane a row addresses.
#[derive(Clone, Copy)]
enum Plane {
    /// The default vault's data plane (`https://localhost:port/secrets...`).
    Vault,
    /// The management API; the row's path is relative to this prefix.
    Mgmt(&'static str),
    /// A root path of the main host.
    Root,
    /// The `matrix-ns` Event Hubs namespace host.
    Hub,
}

/// The route's own credential, used in the last column.
#[derive(Clone, Copy)]
enum Own {
    Admin,
    /// No credential at all: a public route.
    Public,
    /// The topic's access key in `aeg-sas-key`.
    TopicKey,
    /// A SAS token of the namespace's RootManageSharedAccessKey.
    HubSas,
    /// The running job's token.
    Job,
    /// The webhook URL's `?token=` (the URL is the credential).
    WebhookUrl,
    /// A client-credentials form for the token endpoint.
    TokenForm,
}

struct Row {
    /// `file METHOD path`, exactly as the route is written in the source.
    route: &'static str,
    plane: Plane,
    method: Method,
    path: String,
    body: Option<Value>,
    own: Own,
    /// none, wrong, job, principal without, principal with, own.
    expect: [u16; 6],
}

const COLUMNS: [&str; 6] = [
    "no token",
    "wrong token",
    "job token",
    "principal without",
    "principal with",
    "own credential",
];

fn row(
    route: &'static str,
    plane: Plane,
    path: impl Into<String>,
    body: Option<Value>,
    own: Own,
    expect: [u16; 6],
) -> Row {
    let method = route
        .split_whitespace()
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no method in {route}"));
    Row {
        route,
        plane,
        method,
        path: path.into(),
        body,
        own,
        expect,
    }
}

/// What the server's source declares: `file METHOD path` per method.
fn declared_routes() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../herald-server/src/api");
    let mut out = BTreeSet::new();
    for file in files_under(&root) {
        if file.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let name = file
            .strip_prefix(&root)
            .expect("under api/")
            .to_string_lossy()
            .replace('\\', "/");
        let src = std::fs::read_to_string(&file).expect("read source");
        for (path, methods) in routes_in(&src) {
            for m in methods {
                out.insert(format!("{name} {m} {path}"));
            }
        }
    }
    out
}

/// The `.route("path", get(a).post(b))` calls of one source file.
fn routes_in(src: &str) -> Vec<(String, Vec<String>)> {
    const METHODS: [&str; 8] = [
        "get", "post", "put", "patch", "delete", "head", "options", "any",
    ];
    let mut out = Vec::new();
    for (at, _) in src.match_indices(".route(") {
        let rest = &src[at + ".route(".len()..];
        let lit = rest.trim_start();
        let Some(lit) = lit.strip_prefix('"') else {
            panic!("a .route( whose path is not a string literal: {:.80}", rest);
        };
        let path = &lit[..lit.find('"').expect("closing quote")];
        // The call's arguments, up to its matching parenthesis.
        let mut depth = 1;
        let mut end = 0;
        for (i, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                end = i;
                break;
            }
        }
        let args = &rest[..end];
        let mut methods = Vec::new();
        let bytes = args.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i].is_ascii_lowercase() || bytes[i] == b'_' {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                let word = &args[start..i];
                let called = args[i..].trim_start().starts_with('(');
                if called && METHODS.contains(&word) {
                    methods.push(word.to_ascii_uppercase());
                }
            } else {
                i += 1;
            }
        }
        assert!(!methods.is_empty(), "no methods in route {path}");
        out.push((path.to_owned(), methods));
    }
    out
}

/// Every row of the matrix. Columns: none, wrong, job, principal without,
/// principal with, own.
#[rustfmt::skip]
fn rows(w: &World) -> Vec<Row> {
    use Own::*;
    use Plane::*;
    let v = Vault;
    let j = &w.job_id;
    let ver = &w.secret_version;
    let t = &w.tenant;
    // The management API: 401 without a valid token, 403 for job and
    // principal tokens (Herald has no RBAC on management), the admin's
    // answer last.
    let m = |own: u16| [401, 401, 403, 403, 403, own];
    // The vault data plane: a job holds get and list on the vault, the
    // principal "with" holds every secret permission, "without" none.
    let read = |own: u16| [401, 401, own, 403, own, own];
    let write = |own: u16| [401, 401, 403, 403, own, own];
    let ns = Mgmt("/hubs");
    let au = Mgmt("/automation");
    let tp = Mgmt("/topics");
    let nsp = "/namespaces/matrix-ns";
    let hp = "/namespaces/matrix-ns/eventhubs/orders";
    vec![
        // --- the vault data plane ---
        row("secrets.rs GET /secrets", v, "/secrets", None, Admin, read(200)),
        row("secrets.rs GET /secrets/{name}", v, "/secrets/s1", None, Admin, read(200)),
        row("secrets.rs PUT /secrets/{name}", v, "/secrets/m-set", Some(json!({"value": "x"})), Admin, write(200)),
        row("secrets.rs PATCH /secrets/{name}", v, "/secrets/s1", Some(json!({"contentType": "text/plain"})), Admin, write(200)),
        row("secrets.rs DELETE /secrets/{name}", v, "/secrets/nosuch", None, Admin, write(404)),
        row("secrets.rs POST /secrets/{name}", v, "/secrets/restore", Some(json!({"value": "bm90LWEtYmFja3Vw"})), Admin, write(400)),
        row("secrets.rs GET /secrets/{name}/", v, "/secrets/s1/", None, Admin, read(200)),
        row("secrets.rs PATCH /secrets/{name}/", v, "/secrets/s1/", Some(json!({"contentType": "text/plain"})), Admin, write(200)),
        row("secrets.rs GET /secrets/{name}/{version}", v, format!("/secrets/s1/{ver}"), None, Admin, read(200)),
        row("secrets.rs PATCH /secrets/{name}/{version}", v, format!("/secrets/s1/{ver}"), Some(json!({"contentType": "text/plain"})), Admin, write(200)),
        row("secrets.rs POST /secrets/{name}/{version}", v, "/secrets/s1/backup", None, Admin, write(200)),
        row("secrets.rs GET /deletedsecrets", v, "/deletedsecrets", None, Admin, read(200)),
        row("secrets.rs GET /deletedsecrets/{name}", v, "/deletedsecrets/d1", None, Admin, read(200)),
        row("secrets.rs DELETE /deletedsecrets/{name}", v, "/deletedsecrets/nosuch", None, Admin, write(404)),
        row("secrets.rs POST /deletedsecrets/{name}/recover", v, "/deletedsecrets/nosuch/recover", None, Admin, write(404)),
        // --- vaults and access policies ---
        row("vaults.rs GET /", Mgmt("/vaults"), "", None, Admin, m(200)),
        row("vaults.rs POST /", Mgmt("/vaults"), "", Some(json!({"name": "matrix-vault"})), Admin, m(201)),
        row("vaults.rs GET /{name}", Mgmt("/vaults"), "/default", None, Admin, m(200)),
        row("vaults.rs DELETE /{name}", Mgmt("/vaults"), "/nosuch", None, Admin, m(404)),
        row("vaults.rs GET /{name}/accessPolicies", Mgmt("/vaults"), "/default/accessPolicies", None, Admin, m(200)),
        row("vaults.rs PUT /{name}/accessPolicies/{principal}", Mgmt("/vaults"), format!("/default/accessPolicies/{}", w.with_app), Some(json!({"permissions": {"secrets": ["all"]}})), Admin, m(200)),
        row("vaults.rs DELETE /{name}/accessPolicies/{principal}", Mgmt("/vaults"), "/default/accessPolicies/00000000-0000-0000-0000-00000000dead", None, Admin, m(404)),
        // --- principals ---
        row("principals.rs GET /", Mgmt("/principals"), "", None, Admin, m(200)),
        row("principals.rs POST /", Mgmt("/principals"), "", Some(json!({"displayName": "matrix-made"})), Admin, m(201)),
        row("principals.rs GET /{app_id}", Mgmt("/principals"), format!("/{}", w.with_app), None, Admin, m(200)),
        row("principals.rs DELETE /{app_id}", Mgmt("/principals"), "/00000000-0000-0000-0000-00000000dead", None, Admin, m(404)),
        row("principals.rs GET /{app_id}/secrets", Mgmt("/principals"), format!("/{}/secrets", w.with_app), None, Admin, m(200)),
        row("principals.rs POST /{app_id}/secrets", Mgmt("/principals"), "/00000000-0000-0000-0000-00000000dead/secrets", None, Admin, m(404)),
        row("principals.rs DELETE /{app_id}/secrets/{key_id}", Mgmt("/principals"), format!("/{}/secrets/00000000-0000-0000-0000-00000000dead", w.with_app), None, Admin, m(404)),
        // --- storage accounts ---
        row("storage_accounts.rs GET /", Mgmt("/storage/accounts"), "", None, Admin, m(200)),
        row("storage_accounts.rs POST /", Mgmt("/storage/accounts"), "", Some(json!({"name": "matrixmade"})), Admin, m(201)),
        row("storage_accounts.rs GET /{name}", Mgmt("/storage/accounts"), "/matrixacct", None, Admin, m(200)),
        row("storage_accounts.rs DELETE /{name}", Mgmt("/storage/accounts"), "/nosuch", None, Admin, m(404)),
        row("storage_accounts.rs POST /{name}/listKeys", Mgmt("/storage/accounts"), "/matrixacct/listKeys", None, Admin, m(200)),
        row("storage_accounts.rs POST /{name}/regenerateKey", Mgmt("/storage/accounts"), "/matrixacct/regenerateKey", Some(json!({"keyName": "key2"})), Admin, m(200)),
        // --- topics and event subscriptions ---
        row("topics.rs GET /", tp, "", None, Admin, m(200)),
        row("topics.rs POST /", tp, "", Some(json!({"name": "matrix-made"})), Admin, m(201)),
        row("topics.rs GET /{topic}", tp, "/matrix", None, Admin, m(200)),
        row("topics.rs DELETE /{topic}", tp, "/nosuch", None, Admin, m(404)),
        row("topics.rs GET /{topic}/keys", tp, "/matrix/keys", None, Admin, m(200)),
        row("topics.rs POST /{topic}/regenerateKey", tp, "/matrix/regenerateKey", Some(json!({"keyName": "key2"})), Admin, m(200)),
        row("event_subscriptions.rs GET /{topic}/eventSubscriptions", tp, "/matrix/eventSubscriptions", None, Admin, m(200)),
        row("event_subscriptions.rs GET /{topic}/eventSubscriptions/{name}", tp, "/matrix/eventSubscriptions/puller", None, Admin, m(200)),
        row("event_subscriptions.rs PUT /{topic}/eventSubscriptions/{name}", tp, "/matrix/eventSubscriptions/puller", Some(json!({"deliveryConfiguration": {"deliveryMode": "Queue"}})), Admin, m(200)),
        row("event_subscriptions.rs PATCH /{topic}/eventSubscriptions/{name}", tp, "/matrix/eventSubscriptions/puller", Some(json!({"labels": ["m"]})), Admin, m(200)),
        row("event_subscriptions.rs DELETE /{topic}/eventSubscriptions/{name}", tp, "/matrix/eventSubscriptions/nosuch", None, Admin, m(404)),
        row("event_subscriptions.rs GET /{topic}/eventSubscriptions/{name}/deadLetters", tp, "/matrix/eventSubscriptions/puller/deadLetters", None, Admin, m(200)),
        row("event_subscriptions.rs POST /{topic}/eventSubscriptions/{name}/deadLetters/replay", tp, "/matrix/eventSubscriptions/nosuch/deadLetters/replay", Some(json!({})), Admin, m(404)),
        row("event_subscriptions.rs GET /{topic}/eventSubscriptions/{name}/attempts", tp, "/matrix/eventSubscriptions/puller/attempts", None, Admin, m(200)),
        row("event_subscriptions.rs POST /{topic}/eventSubscriptions/{name}/rotateSigningSecret", tp, "/matrix/eventSubscriptions/nosuch/rotateSigningSecret", None, Admin, m(404)),
        // --- publishing and pulling events (Event Grid's data plane) ---
        row("events.rs POST /topics/{topic}/api/events", Root, "/topics/matrix/api/events?api-version=2018-01-01", Some(json!([])), TopicKey, [401, 401, 401, 401, 401, 200]),
        row("events.rs POST /topics/{topic_op}", Root, "/topics/matrix:publish?api-version=2024-06-01", Some(json!([])), TopicKey, [401, 401, 401, 401, 401, 200]),
        row("events.rs POST /topics/{topic}/eventsubscriptions/{sub_op}", Root, "/topics/matrix/eventsubscriptions/puller:receive?api-version=2024-06-01&maxWaitTime=0", None, TopicKey, [401, 401, 401, 401, 401, 200]),
        row("events.rs POST /topics/{topic}/eventSubscriptions/{sub_op}", Root, "/topics/matrix/eventSubscriptions/puller:receive?api-version=2024-06-01&maxWaitTime=0", None, TopicKey, [401, 401, 401, 401, 401, 200]),
        // A capability URL Herald mailed out: the code in it is the credential.
        row("events.rs GET /eventsubscriptions/{name}/validate", Root, "/eventsubscriptions/nosuch/validate?token=wrong", None, Public, [404, 404, 404, 404, 404, 404]),
        row("events.rs POST /eventsubscriptions/{name}/validate", Root, "/eventsubscriptions/nosuch/validate?token=wrong", None, Public, [404, 404, 404, 404, 404, 404]),
        // --- hubs management ---
        row("hubs.rs GET /namespaces", ns, "/namespaces", None, Admin, m(200)),
        row("hubs.rs POST /namespaces", ns, "/namespaces", Some(json!({"name": "matrix-made"})), Admin, m(201)),
        row("hubs.rs GET /namespaces/{ns}", ns, nsp, None, Admin, m(200)),
        row("hubs.rs DELETE /namespaces/{ns}", ns, "/namespaces/nosuch", None, Admin, m(404)),
        row("hubs.rs GET /namespaces/{ns}/eventhubs", ns, format!("{nsp}/eventhubs"), None, Admin, m(200)),
        row("hubs.rs POST /namespaces/{ns}/eventhubs", ns, format!("{nsp}/eventhubs"), Some(json!({"name": "made"})), Admin, m(201)),
        row("hubs.rs GET /namespaces/{ns}/eventhubs/{hub}", ns, hp, None, Admin, m(200)),
        row("hubs.rs PATCH /namespaces/{ns}/eventhubs/{hub}", ns, hp, Some(json!({"retentionTimeInHours": 48})), Admin, m(200)),
        row("hubs.rs DELETE /namespaces/{ns}/eventhubs/{hub}", ns, format!("{nsp}/eventhubs/nosuch"), None, Admin, m(404)),
        row("hubs.rs GET /namespaces/{ns}/eventhubs/{hub}/consumergroups", ns, format!("{hp}/consumergroups"), None, Admin, m(200)),
        row("hubs.rs PUT /namespaces/{ns}/eventhubs/{hub}/consumergroups/{cg}", ns, format!("{hp}/consumergroups/matrix"), None, Admin, m(201)),
        row("hubs.rs DELETE /namespaces/{ns}/eventhubs/{hub}/consumergroups/{cg}", ns, format!("{hp}/consumergroups/nosuch"), None, Admin, m(404)),
        row("hubs.rs GET /namespaces/{ns}/authorizationRules", ns, format!("{nsp}/authorizationRules"), None, Admin, m(200)),
        row("hubs.rs PUT /namespaces/{ns}/authorizationRules/{rule}", ns, format!("{nsp}/authorizationRules/matrix"), Some(json!({"rights": ["Listen"]})), Admin, m(201)),
        row("hubs.rs DELETE /namespaces/{ns}/authorizationRules/{rule}", ns, format!("{nsp}/authorizationRules/nosuch"), None, Admin, m(404)),
        row("hubs.rs POST /namespaces/{ns}/authorizationRules/{rule}/listKeys", ns, format!("{nsp}/authorizationRules/RootManageSharedAccessKey/listKeys"), None, Admin, m(200)),
        row("hubs.rs POST /namespaces/{ns}/authorizationRules/{rule}/regenerateKeys", ns, format!("{nsp}/authorizationRules/matrix/regenerateKeys"), Some(json!({"keyType": "SecondaryKey"})), Admin, m(200)),
        row("hubs.rs GET /namespaces/{ns}/eventhubs/{hub}/authorizationRules", ns, format!("{hp}/authorizationRules"), None, Admin, m(200)),
        row("hubs.rs PUT /namespaces/{ns}/eventhubs/{hub}/authorizationRules/{rule}", ns, format!("{hp}/authorizationRules/matrix"), Some(json!({"rights": ["Send"]})), Admin, m(201)),
        row("hubs.rs DELETE /namespaces/{ns}/eventhubs/{hub}/authorizationRules/{rule}", ns, format!("{hp}/authorizationRules/nosuch"), None, Admin, m(404)),
        row("hubs.rs POST /namespaces/{ns}/eventhubs/{hub}/authorizationRules/{rule}/listKeys", ns, format!("{hp}/authorizationRules/matrix/listKeys"), None, Admin, m(200)),
        row("hubs.rs POST /namespaces/{ns}/eventhubs/{hub}/authorizationRules/{rule}/regenerateKeys", ns, format!("{hp}/authorizationRules/matrix/regenerateKeys"), Some(json!({"keyType": "SecondaryKey"})), Admin, m(200)),
        // --- the hubs data plane (REST) ---
        row("hub_data.rs POST /{hub}/messages", Hub, "/orders/messages", None, HubSas, [401, 401, 401, 401, 401, 201]),
        row("hub_data.rs POST /{hub}/partitions/{p}/messages", Hub, "/orders/partitions/0/messages", None, HubSas, [401, 401, 401, 401, 401, 201]),
        row("hub_data.rs POST /{hub}/publishers/{publisher}/messages", Hub, "/orders/publishers/dev1/messages", None, HubSas, [401, 401, 401, 401, 401, 201]),
        row("hub_data.rs GET /{hub}/consumergroups/{cg}/partitions/{p}/messages", Hub, "/orders/consumergroups/$Default/partitions/0/messages?fromSequenceNumber=0", None, HubSas, [401, 401, 401, 401, 401, 200]),
        row("hub_data.rs GET /{hub}/consumergroups/{cg}/checkpoints/{p}", Hub, "/orders/consumergroups/$Default/checkpoints/1", None, HubSas, [401, 401, 401, 401, 401, 404]),
        row("hub_data.rs PUT /{hub}/consumergroups/{cg}/checkpoints/{p}", Hub, "/orders/consumergroups/$Default/checkpoints/0", Some(json!({"sequenceNumber": 0, "offset": "0"})), HubSas, [401, 401, 401, 401, 401, 204]),
        // --- automation ---
        row("automation/mod.rs GET /runbooks", au, "/runbooks", None, Admin, m(200)),
        row("automation/mod.rs GET /runbooks/{name}", au, "/runbooks/holder", None, Admin, m(200)),
        row("automation/mod.rs PUT /runbooks/{name}", au, "/runbooks/matrix-made", Some(json!({"runbookType": "bash", "content": "true"})), Admin, m(201)),
        row("automation/mod.rs PATCH /runbooks/{name}", au, "/runbooks/holder", Some(json!({"description": "m"})), Admin, m(200)),
        row("automation/mod.rs DELETE /runbooks/{name}", au, "/runbooks/nosuch", None, Admin, m(404)),
        row("automation/mod.rs GET /runbooks/{name}/content", au, "/runbooks/holder/content", None, Admin, m(200)),
        row("automation/mod.rs PUT /runbooks/{name}/content", au, "/runbooks/nosuch/content", None, Admin, m(404)),
        row("automation/mod.rs POST /runbooks/{name}/publish", au, "/runbooks/nosuch/publish", None, Admin, m(404)),
        row("automation/mod.rs POST /runbooks/{name}/start", au, "/runbooks/nosuch/start", None, Admin, m(404)),
        row("automation/mod.rs GET /webhooks", au, "/webhooks", None, Admin, m(200)),
        row("automation/mod.rs POST /webhooks/generateUri", au, "/webhooks/generateUri", None, Admin, m(200)),
        row("automation/mod.rs GET /webhooks/{name}", au, "/webhooks/matrix-hook", None, Admin, m(200)),
        row("automation/mod.rs PUT /webhooks/{name}", au, "/webhooks/nosuch", Some(json!({"name": "nosuch", "properties": {"runbook": {"name": "nosuch"}}})), Admin, m(400)),
        row("automation/mod.rs PATCH /webhooks/{name}", au, "/webhooks/matrix-hook", Some(json!({"properties": {"isEnabled": true}})), Admin, m(200)),
        row("automation/mod.rs DELETE /webhooks/{name}", au, "/webhooks/nosuch", None, Admin, m(404)),
        row("automation/mod.rs GET /jobs", au, "/jobs", None, Admin, m(200)),
        row("automation/mod.rs GET /jobs/{id}", au, format!("/jobs/{j}"), None, Admin, m(200)),
        row("automation/mod.rs GET /jobs/{id}/output", au, format!("/jobs/{j}/output"), None, Admin, m(200)),
        row("automation/mod.rs GET /jobs/{id}/streams", au, format!("/jobs/{j}/streams"), None, Admin, m(200)),
        row("automation/mod.rs GET /jobs/{id}/streams/{stream_id}", au, format!("/jobs/{j}/streams/nosuch"), None, Admin, m(404)),
        row("automation/mod.rs POST /jobs/{id}/stop", au, "/jobs/00000000-0000-0000-0000-00000000dead/stop", None, Admin, m(404)),
        row("automation/mod.rs POST /jobs/{id}/resume", au, "/jobs/00000000-0000-0000-0000-00000000dead/resume", None, Admin, m(404)),
        row("automation/mod.rs GET /variables", au, "/variables", None, Admin, m(200)),
        row("automation/mod.rs GET /variables/{name}", au, "/variables/nosuch", None, Admin, m(404)),
        row("automation/mod.rs PUT /variables/{name}", au, "/variables/matrix", Some(json!({"name": "matrix", "properties": {"value": "\"x\""}})), Admin, m(200)),
        row("automation/mod.rs DELETE /variables/{name}", au, "/variables/nosuch", None, Admin, m(404)),
        row("automation/mod.rs GET /credentials", au, "/credentials", None, Admin, m(200)),
        row("automation/mod.rs GET /credentials/{name}", au, "/credentials/nosuch", None, Admin, m(404)),
        row("automation/mod.rs PUT /credentials/{name}", au, "/credentials/matrix", Some(json!({"name": "matrix", "properties": {"userName": "u", "password": "p"}})), Admin, m(200)),
        row("automation/mod.rs DELETE /credentials/{name}", au, "/credentials/nosuch", None, Admin, m(404)),
        row("automation/mod.rs GET /sandbox", au, "/sandbox", None, Admin, m(200)),
        row("automation/mod.rs GET /workers", au, "/workers", None, Admin, m(200)),
        row("automation/mod.rs POST /workers/{group}/lease", au, "/workers/empty/lease", Some(json!({"workerId": "w2", "waitSeconds": 0})), Admin, m(200)),
        row("automation/mod.rs POST /jobs/{id}/started", au, "/jobs/00000000-0000-0000-0000-00000000dead/started", Some(json!({"workerId": "w1"})), Admin, m(409)),
        row("automation/mod.rs POST /jobs/{id}/heartbeat", au, "/jobs/00000000-0000-0000-0000-00000000dead/heartbeat", Some(json!({"workerId": "w1"})), Admin, m(409)),
        row("automation/mod.rs POST /jobs/{id}/records", au, "/jobs/00000000-0000-0000-0000-00000000dead/records", Some(json!({"workerId": "w1"})), Admin, m(409)),
        row("automation/mod.rs POST /jobs/{id}/finish", au, "/jobs/00000000-0000-0000-0000-00000000dead/finish", Some(json!({"workerId": "w1"})), Admin, m(400)),
        // A job reads assets with its own token and nothing else.
        row("automation/job_token.rs GET /api/v1/automation/job/assets/{name}", Root, "/api/v1/automation/job/assets/nosuch", None, Job, [401, 401, 403, 401, 401, 403]),
        // The webhook URL is the credential; headers do not matter.
        row("webhooks.rs POST /webhooks", Root, "/webhooks?token=wrong", None, WebhookUrl, [400, 400, 400, 400, 400, 202]),
        row("webhooks.rs OPTIONS /webhooks", Root, "/webhooks?token=wrong", None, WebhookUrl, [400, 400, 400, 400, 400, 200]),
        // --- status and system ---
        row("status.rs GET /", Mgmt("/status"), "", None, Admin, m(200)),
        row("system.rs GET /healthz", Root, "/healthz", None, Public, [200; 6]),
        row("system.rs GET /metrics", Root, "/metrics", None, Admin, m(200)),
        row("system.rs GET /herald/ca.pem", Root, "/herald/ca.pem", None, Public, [200; 6]),
        // --- identity: public by design (the token endpoint checks the form) ---
        row("identity.rs GET /{tenant}/v2.0/.well-known/openid-configuration", Root, format!("/{t}/v2.0/.well-known/openid-configuration"), None, Public, [200; 6]),
        row("identity.rs GET /{tenant}/discovery/v2.0/keys", Root, format!("/{t}/discovery/v2.0/keys"), None, Public, [200; 6]),
        row("identity.rs POST /{tenant}/oauth2/v2.0/token", Root, format!("/{t}/oauth2/v2.0/token"), None, TokenForm, [400, 400, 400, 400, 400, 200]),
    ]
}

/// What the rows need to exist, and the credentials of the columns.
struct World {
    tenant: String,
    job_id: String,
    job_token: String,
    secret_version: String,
    with_app: String,
    with_secret: String,
    /// Vault-audience and management-audience tokens of both principals.
    without_vault: String,
    without_mgmt: String,
    with_vault: String,
    with_mgmt: String,
    topic_key: String,
    hub_sas: String,
    webhook_url: String,
}

const MGMT_SCOPE: &str = "https://management.azure.com/.default";

async fn admin(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> Resp {
    let mut req = app
        .client
        .request(
            method,
            format!("https://localhost:{}/api/v1{path}", app.port),
        )
        .bearer_auth(&app.token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    app.send(req).await
}

async fn world(app: &TestApp) -> World {
    let kv = |method: Method, path: &str, body: Option<Value>| {
        let mut req = app
            .client
            .request(method, app.vault_url(DEFAULT, path))
            .bearer_auth(&app.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        app.send(req)
    };
    let s1 = kv(Method::PUT, "/secrets/s1", Some(json!({"value": "one"}))).await;
    let secret_version = version_of(s1.expect(200)["id"].as_str().unwrap());
    kv(Method::PUT, "/secrets/d1", Some(json!({"value": "gone"})))
        .await
        .expect(200);
    kv(Method::DELETE, "/secrets/d1", None).await.expect(200);

    let (without_app, _, without_secret) = principal(app, "matrix-without").await;
    let (with_app, _, with_secret) = principal(app, "matrix-with").await;
    admin(
        app,
        Method::PUT,
        &format!("/vaults/default/accessPolicies/{with_app}"),
        Some(json!({"permissions": {"secrets": ["all"]}})),
    )
    .await
    .expect(200);

    admin(
        app,
        Method::POST,
        "/storage/accounts",
        Some(json!({"name": "matrixacct"})),
    )
    .await
    .expect(201);
    admin(
        app,
        Method::POST,
        "/topics",
        Some(json!({"name": "matrix"})),
    )
    .await
    .expect(201);
    let keys = admin(app, Method::GET, "/topics/matrix/keys", None).await;
    let topic_key = keys.expect(200)["key1"].as_str().unwrap().to_owned();
    admin(
        app,
        Method::PUT,
        "/topics/matrix/eventSubscriptions/puller",
        Some(json!({"deliveryConfiguration": {"deliveryMode": "Queue"}})),
    )
    .await
    .expect(201);

    admin(
        app,
        Method::POST,
        "/hubs/namespaces",
        Some(json!({"name": "matrix-ns"})),
    )
    .await
    .expect(201);
    admin(
        app,
        Method::POST,
        "/hubs/namespaces/matrix-ns/eventhubs",
        Some(json!({"name": "orders", "partitionCount": 2})),
    )
    .await
    .expect(201);
    let keys = admin(
        app,
        Method::POST,
        "/hubs/namespaces/matrix-ns/authorizationRules/RootManageSharedAccessKey/listKeys",
        None,
    )
    .await;
    let root_key = keys.expect(200)["primaryKey"].as_str().unwrap().to_owned();
    let hub_sas = herald_hubs::sas::sign(
        "https://matrix-ns.servicebus.localhost/orders",
        "RootManageSharedAccessKey",
        &root_key,
        now() + 3600,
    );

    // A job that a worker has leased: its token is live until it finishes.
    admin(
        app,
        Method::PUT,
        "/automation/runbooks/holder",
        Some(json!({
            "runbookType": "bash",
            "content": "sleep 60",
            "publish": true,
            "permissions": [{"vault": "default", "actions": ["get", "list"]}],
        })),
    )
    .await
    .expect(201);
    admin(
        app,
        Method::POST,
        "/automation/runbooks/holder/start",
        Some(json!({"runOn": "matrix"})),
    )
    .await
    .expect(201);
    let leased = admin(
        app,
        Method::POST,
        "/automation/workers/matrix/lease",
        Some(json!({"workerId": "w1", "waitSeconds": 10})),
    )
    .await;
    let job = &leased.expect(200)["jobs"][0];
    let job_id = job["job_id"]
        .as_str()
        .or_else(|| job["jobId"].as_str())
        .unwrap_or_else(|| panic!("a leased job: {}", leased.text))
        .to_owned();
    let job_token = job["token"].as_str().unwrap().to_owned();

    let hook = admin(
        app,
        Method::PUT,
        "/automation/webhooks/matrix-hook",
        Some(json!({"name": "matrix-hook", "properties": {"runbook": {"name": "holder"}, "runOn": "matrix"}})),
    )
    .await;
    let webhook_url = hook.expect(201)["properties"]["uri"]
        .as_str()
        .unwrap()
        .to_owned();

    World {
        tenant: app.tenant.clone(),
        job_id,
        job_token,
        secret_version,
        without_vault: token_for(app, &without_app, &without_secret, VAULT_SCOPE).await,
        without_mgmt: token_for(app, &without_app, &without_secret, MGMT_SCOPE).await,
        with_vault: token_for(app, &with_app, &with_secret, VAULT_SCOPE).await,
        with_mgmt: token_for(app, &with_app, &with_secret, MGMT_SCOPE).await,
        with_app,
        with_secret,
        topic_key,
        hub_sas,
        webhook_url,
    }
}

fn url(app: &TestApp, r: &Row, w: &World, column: usize) -> String {
    match r.plane {
        Plane::Vault => app.vault_url(DEFAULT, &r.path),
        Plane::Mgmt(prefix) => format!("https://localhost:{}/api/v1{prefix}{}", app.port, r.path),
        Plane::Root if column == 5 && matches!(r.own, Own::WebhookUrl) => w.webhook_url.clone(),
        Plane::Root => format!("https://localhost:{}{}", app.port, r.path),
        Plane::Hub => format!(
            "https://matrix-ns.servicebus.localhost:{}{}",
            app.port, r.path
        ),
    }
}

async fn call(app: &TestApp, r: &Row, w: &World, column: usize) -> Resp {
    let mut req = app.client.request(r.method.clone(), url(app, r, w, column));
    let vault = matches!(r.plane, Plane::Vault);
    let bearer = match column {
        0 => None,
        1 => Some("hrd_not-a-token-of-this-server".to_owned()),
        2 => Some(w.job_token.clone()),
        3 if vault => Some(w.without_vault.clone()),
        3 => Some(w.without_mgmt.clone()),
        4 if vault => Some(w.with_vault.clone()),
        4 => Some(w.with_mgmt.clone()),
        _ => match r.own {
            Own::Admin => Some(app.token.clone()),
            Own::Job => Some(w.job_token.clone()),
            _ => None,
        },
    };
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    if column == 5 {
        match r.own {
            Own::TopicKey => req = req.header("aeg-sas-key", &w.topic_key),
            Own::HubSas => req = req.header("Authorization", &w.hub_sas),
            Own::TokenForm => {
                return app
                    .send(req.form(&[
                        ("grant_type", "client_credentials"),
                        ("client_id", w.with_app.as_str()),
                        ("client_secret", w.with_secret.as_str()),
                        ("scope", VAULT_SCOPE),
                    ]))
                    .await;
            }
            _ => {}
        }
    }
    if let Some(b) = &r.body {
        req = req.json(b);
    } else if matches!(r.plane, Plane::Hub) && r.method == Method::POST {
        req = req.body("matrix");
    }
    app.send(req).await
}

#[test]
fn the_route_scanner_reads_multiline_routes() {
    let src = r#"
        Router::new()
            .route("/a", get(x).post(y))
            .route(
                "/b/{id}",
                axum::routing::put(set)
                    .delete(remove),
            )
    "#;
    assert_eq!(
        routes_in(src),
        vec![
            ("/a".to_owned(), vec!["GET".to_owned(), "POST".to_owned()]),
            (
                "/b/{id}".to_owned(),
                vec!["PUT".to_owned(), "DELETE".to_owned()]
            ),
        ]
    );
}

/// Every route the source declares has a row, and every row names a route
/// that exists.
#[tokio::test]
async fn every_route_has_a_row() {
    let declared = declared_routes();
    assert!(
        declared.len() > 100,
        "the scanner found {} routes",
        declared.len()
    );
    let w = World::placeholder();
    let listed: BTreeSet<String> = rows(&w).iter().map(|r| r.route.to_owned()).collect();
    let missing: Vec<_> = declared.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&declared).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "routes without a row in the authorization matrix: {missing:#?}\nrows for routes that do not exist: {stale:#?}"
    );
}

impl World {
    fn placeholder() -> Self {
        let s = String::new;
        World {
            tenant: s(),
            job_id: s(),
            job_token: s(),
            secret_version: s(),
            with_app: s(),
            with_secret: s(),
            without_vault: s(),
            without_mgmt: s(),
            with_vault: s(),
            with_mgmt: s(),
            topic_key: s(),
            hub_sas: s(),
            webhook_url: s(),
        }
    }
}

#[tokio::test]
async fn every_route_answers_every_caller_as_the_matrix_says() {
    let app = spawn_app().await;
    let w = world(&app).await;
    let mut wrong = Vec::new();
    for r in rows(&w) {
        for (column, want) in r.expect.iter().enumerate() {
            let got = call(&app, &r, &w, column).await;
            if got.status != *want {
                wrong.push(format!(
                    "{} ({} {}) with {}: want {want}, got {} {:.200}",
                    r.route, r.method, r.path, COLUMNS[column], got.status, got.text
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} cells differ from the matrix:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
