//! One Prometheus recorder per process (metrics' recorder is global), shared
//! by every server started in it, as happens in tests.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; then our
            // handle renders nothing, which is preferable to crashing.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
