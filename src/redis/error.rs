//! fred's errors as the crate's, keeping their kind.

use fred::error::{Error as FredError, ErrorKind};

use crate::error::{Error, RedisErrorKind};

impl From<FredError> for Error {
    fn from(e: FredError) -> Self {
        let kind = match e.kind() {
            ErrorKind::Timeout => RedisErrorKind::Timeout,
            ErrorKind::IO
            | ErrorKind::Canceled
            | ErrorKind::Routing
            | ErrorKind::Cluster
            | ErrorKind::Sentinel
            | ErrorKind::Backpressure => RedisErrorKind::Connection,
            ErrorKind::Auth | ErrorKind::InvalidCommand | ErrorKind::InvalidArgument => {
                RedisErrorKind::Refused
            }
            // A server's error reply that fred has no kind for (a script that does not
            // compile, a WRONGTYPE): the server refused it.
            ErrorKind::Unknown => RedisErrorKind::Refused,
            _ => RedisErrorKind::Other,
        };
        Error::redis(kind, e.details().to_string())
    }
}
