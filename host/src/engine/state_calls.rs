//! The `state` interface of the `processor` world: host functions over the
//! [`State`] the worker lends the instance for each call.
//!
//! Every failure is a WIT `state-error`, never a trap: a key over the limit
//! or an unknown store fails the record that asked, and the stream goes on.

use crate::state::{State, StateError};

use super::bindings::processor::runnel::stream::state::{self as wit, Packed, Page};

/// The state an instance may use during a call: lent by its worker for the
/// call, absent between calls and in `init`.
#[derive(Debug, Default)]
pub(crate) struct Lent(pub(crate) Option<State>);

impl Lent {
    fn state(&mut self) -> Result<&mut State, wit::StateError> {
        self.0.as_mut().ok_or_else(|| {
            wit::StateError::BadArgument(
                "state is only available while a batch is processed (not in `init`)".to_owned(),
            )
        })
    }
}

fn to_wit(e: StateError) -> wit::StateError {
    match e {
        StateError::UnknownStore { .. } => wit::StateError::UnknownStore(e.to_string()),
        StateError::BadArgument(m) => wit::StateError::BadArgument(m),
        StateError::Limit(m) => wit::StateError::Limit(m),
        StateError::Store(_) => wit::StateError::Store(e.to_string()),
    }
}

const ABSENT: u32 = u32::MAX;

/// The items of a `packed` of keys: none may be absent, and the lengths
/// must add up to at most the data.
fn unpack(p: &Packed) -> Result<Vec<&[u8]>, wit::StateError> {
    let mut out = Vec::with_capacity(p.lengths.len());
    let mut at = 0usize;
    for (i, &len) in p.lengths.iter().enumerate() {
        let end = if len == ABSENT {
            None
        } else {
            at.checked_add(len as usize).filter(|&e| e <= p.data.len())
        };
        let Some(end) = end else {
            return Err(wit::StateError::BadArgument(format!(
                "key {i} of the packed keys is absent or runs past their {} bytes",
                p.data.len()
            )));
        };
        out.push(&p.data[at..end]);
        at = end;
    }
    Ok(out)
}

fn pack<'a>(items: impl Iterator<Item = Option<&'a [u8]>>) -> Packed {
    let mut p = Packed {
        data: Vec::new(),
        lengths: Vec::new(),
    };
    for item in items {
        match item {
            Some(b) => {
                p.lengths.push(b.len() as u32);
                p.data.extend_from_slice(b);
            }
            None => p.lengths.push(ABSENT),
        }
    }
    p
}

impl wit::Host for Lent {
    fn open(&mut self, name: String) -> Result<u32, wit::StateError> {
        self.state()?.open(&name).map_err(to_wit)
    }

    fn get(
        &mut self,
        store: u32,
        record: u32,
        key: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, wit::StateError> {
        self.state()?.get(store, record, &key).map_err(to_wit)
    }

    fn get_many(
        &mut self,
        store: u32,
        record: u32,
        keys: Packed,
    ) -> Result<Packed, wit::StateError> {
        let list = unpack(&keys)?;
        let values = self
            .state()?
            .get_many(store, record, list.into_iter())
            .map_err(to_wit)?;
        Ok(pack(values.iter().map(Option::as_deref)))
    }

    fn put(
        &mut self,
        store: u32,
        record: u32,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), wit::StateError> {
        self.state()?
            .put(store, record, &key, &value)
            .map_err(to_wit)
    }

    fn delete(&mut self, store: u32, record: u32, key: Vec<u8>) -> Result<(), wit::StateError> {
        self.state()?.delete(store, record, &key).map_err(to_wit)
    }

    fn scan(
        &mut self,
        store: u32,
        record: u32,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: u32,
    ) -> Result<Page, wit::StateError> {
        let page = self
            .state()?
            .scan(store, record, &start, end.as_deref(), limit)
            .map_err(to_wit)?;
        Ok(Page {
            keys: pack(page.entries.iter().map(|(k, _)| Some(k.as_slice()))),
            values: pack(page.entries.iter().map(|(_, v)| Some(v.as_slice()))),
            next: page.next,
        })
    }

    fn discard(&mut self, record: u32) {
        if let Some(state) = self.0.as_mut() {
            state.discard(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_keys_are_checked() {
        let ok = Packed {
            data: b"abcd".to_vec(),
            lengths: vec![1, 0, 3],
        };
        assert_eq!(unpack(&ok).unwrap(), vec![&b"a"[..], b"", b"bcd"]);
        for lengths in [vec![5], vec![ABSENT], vec![2, u32::MAX - 1]] {
            let bad = Packed {
                data: b"abcd".to_vec(),
                lengths,
            };
            assert!(matches!(unpack(&bad), Err(wit::StateError::BadArgument(_))));
        }
    }
}
