//! AMQP error conditions and the texts Azure uses (A9.4, A9.7).

use fe2o3_amqp_types::{
    definitions::{AmqpError, ErrorCondition, LinkError},
    primitives::Symbol,
};

pub(crate) use fe2o3_amqp_types::definitions::Error as AmqpErrorValue;

pub(crate) fn tracking_id() -> String {
    format!("TrackingId:{}", uuid::Uuid::new_v4())
}

fn custom(sym: &str) -> ErrorCondition {
    ErrorCondition::Custom(Symbol::from(sym))
}

pub(crate) fn error(condition: ErrorCondition, description: impl Into<String>) -> AmqpErrorValue {
    AmqpErrorValue::new(condition, Some(description.into()), None)
}

pub(crate) fn not_found(entity: &str) -> AmqpErrorValue {
    error(
        AmqpError::NotFound.into(),
        format!(
            "The messaging entity '{entity}' could not be found. To know more visit https://aka.ms/sbResourceMgrExceptions. {}",
            tracking_id()
        ),
    )
}

pub(crate) fn unauthorized_claim(claim: &str, resource: &str) -> AmqpErrorValue {
    error(
        AmqpError::UnauthorizedAccess.into(),
        format!(
            "Unauthorized access. '{claim}' claim(s) are required to perform this operation. Resource: '{resource}'. {}",
            tracking_id()
        ),
    )
}

pub(crate) fn unauthorized(text: &str) -> AmqpErrorValue {
    error(
        AmqpError::UnauthorizedAccess.into(),
        format!("{text} {}", tracking_id()),
    )
}

pub(crate) fn out_of_range(requested: i64, last: i64) -> AmqpErrorValue {
    error(
        custom("com.microsoft:argument-out-of-range"),
        format!(
            "The supplied sequence number '{requested}' is invalid. The last sequence number in the system is '{last}'. {}",
            tracking_id()
        ),
    )
}

pub(crate) fn argument_error(text: &str) -> AmqpErrorValue {
    error(
        custom("com.microsoft:argument-error"),
        format!("{text} {}", tracking_id()),
    )
}

pub(crate) fn server_busy(text: &str) -> AmqpErrorValue {
    error(
        custom("com.microsoft:server-busy"),
        format!("{text} {}", tracking_id()),
    )
}

pub(crate) fn internal(text: &str) -> AmqpErrorValue {
    error(
        AmqpError::InternalError.into(),
        format!("{text} {}", tracking_id()),
    )
}

pub(crate) fn message_size_exceeded(size: usize, max: usize) -> AmqpErrorValue {
    error(
        LinkError::MessageSizeExceeded.into(),
        format!(
            "The received message ({size} bytes) exceeds the limit ({max} bytes) currently allowed on the link. {}",
            tracking_id()
        ),
    )
}

pub(crate) fn decode_error(text: &str) -> AmqpErrorValue {
    error(
        AmqpError::DecodeError.into(),
        format!("{text} {}", tracking_id()),
    )
}

pub(crate) fn invalid_field(text: &str) -> AmqpErrorValue {
    error(
        AmqpError::InvalidField.into(),
        format!("{text} {}", tracking_id()),
    )
}

pub(crate) fn stolen(text: &str) -> AmqpErrorValue {
    error(
        LinkError::Stolen.into(),
        format!("{text} {}", tracking_id()),
    )
}

pub(crate) fn resource_limit(text: &str) -> AmqpErrorValue {
    error(
        AmqpError::ResourceLimitExceeded.into(),
        format!("{text} {}", tracking_id()),
    )
}
