//! How an operation run by a shard writer can fail: its own refusal, or storage.

/// The error of an operation applied inside a shard writer's batch ([`super::Engine::write`]).
///
/// `Rejected` is the operation's own outcome (a failed precondition, bad input, a corrupt record
/// it will not judge): the operation has changed nothing (every apply function checks before it
/// mutates), the batch goes on, and only this operation's caller gets `E`. `Storage` is a redb
/// failure: the whole batch fails and the shard stops accepting writes.
#[derive(Debug)]
pub enum OpError<E> {
    Rejected(E),
    Storage(redb::Error),
}

impl<E> From<redb::Error> for OpError<E> {
    fn from(e: redb::Error) -> Self {
        OpError::Storage(e)
    }
}

impl<E> From<redb::StorageError> for OpError<E> {
    fn from(e: redb::StorageError) -> Self {
        OpError::Storage(e.into())
    }
}

impl<E> From<redb::TableError> for OpError<E> {
    fn from(e: redb::TableError) -> Self {
        OpError::Storage(e.into())
    }
}

/// `?` on a domain error in an apply function rejects the operation: each domain states it for
/// its error type, next to it (`rejects!(KvError)`). One impl per domain error, since a blanket
/// `From<E>` would overlap the redb ones.
macro_rules! rejects {
    ($($e:ty),*) => {$(
        impl From<$e> for $crate::engine::OpError<$e> {
            fn from(e: $e) -> Self {
                $crate::engine::OpError::Rejected(e)
            }
        }
    )*};
}
pub(crate) use rejects;
