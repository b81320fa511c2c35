//! The one call into librdkafka that rdkafka does not wrap: telling a mock broker which address to
//! put in its metadata.

use std::{ffi::CString, net::SocketAddr};

use rdkafka::{ClientContext, bindings, client::Client};

use crate::BrokerError;

/// Makes broker 1 of the mock cluster owned by `owner` advertise `addr` in its metadata answers, so
/// that clients, after bootstrapping, come back to `addr` instead of to the mock's own random port.
///
/// `owner` must have been created with `test.mock.num.brokers` (that is what gives it a cluster).
#[allow(unsafe_code)]
pub(super) fn advertise<C: ClientContext>(
    owner: &Client<C>,
    addr: SocketAddr,
) -> Result<(), BrokerError> {
    let host = CString::new(addr.ip().to_string())
        .map_err(|_| BrokerError::Task("an IP address has no NUL byte".into()))?;
    // SAFETY: `owner.native_ptr()` is a live rd_kafka_t for as long as `owner` is borrowed, and
    // rd_kafka_handle_mock_cluster only reads the cluster pointer out of it (null if it has none,
    // checked below). rd_kafka_mock_broker_set_host_port copies `host` into the broker under the
    // cluster's lock and keeps no pointer to it; an unknown broker id is ignored.
    unsafe {
        let cluster = bindings::rd_kafka_handle_mock_cluster(owner.native_ptr());
        if cluster.is_null() {
            return Err(BrokerError::NoMockCluster);
        }
        bindings::rd_kafka_mock_broker_set_host_port(
            cluster,
            1,
            host.as_ptr(),
            i32::from(addr.port()),
        );
    }
    Ok(())
}
