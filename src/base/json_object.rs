//! JSON objects read as objects only. A derived struct's visitor also reads a JSON array
//! positionally (`[1, "k"]` as `{"by": 1, "key": "k"}`), and an internally tagged enum takes an
//! array's first element as its tag: a body such as `[null, true]` would be a purge of a whole
//! namespace. No request or line shardbox reads means that, so [`from_object`] reads the top
//! object as a map only, and [`object`], [`object_opt`] and [`objects`] (for
//! `#[serde(deserialize_with)]`) do the same for the objects nested in it.

use serde::de::{Deserialize, DeserializeOwned, Deserializer, Visitor};

/// A deserializer that hands every struct, map and "anything" request to the inner one as a
/// map request, so an array is refused ("invalid type: sequence, expected …").
struct MapOnly<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for MapOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(v)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(v)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// Reads one object (not an array) into `T`.
pub fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    T::deserialize(MapOnly(d))
}

struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        object(d).map(Obj)
    }
}

/// As [`object`], for an optional field (`null` or absent: `None`; use with `default`).
pub fn object_opt<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    Ok(Option::<Obj<T>>::deserialize(d)?.map(|o| o.0))
}

/// As [`object`], for an array of objects.
pub fn objects<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Vec::<Obj<T>>::deserialize(d)?
        .into_iter()
        .map(|o| o.0)
        .collect())
}

/// Parses `bytes` as one JSON object into `T` (trailing characters refused, as
/// `serde_json::from_slice` does).
pub fn from_object<T: DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let t = object(&mut de)?;
    de.end()?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: u32,
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(tag = "op", rename_all = "lowercase")]
    enum Op {
        Put { key: String },
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Outer {
        by: i64,
        #[serde(default, deserialize_with = "object_opt")]
        inner: Option<Inner>,
        #[serde(default, deserialize_with = "objects")]
        ops: Vec<Op>,
    }

    #[test]
    fn objects_are_read_and_arrays_refused_at_every_level() {
        let ok: Outer =
            from_object(br#" {"by": 1, "inner": {"a": 2}, "ops": [{"op": "put", "key": "k"}]} "#)
                .unwrap();
        assert_eq!(ok.inner, Some(Inner { a: 2 }));
        assert_eq!(ok.ops, vec![Op::Put { key: "k".into() }]);
        let none: Outer = from_object(br#"{"by": 1, "inner": null}"#).unwrap();
        assert_eq!(none.inner, None);
        // The positional readings serde would otherwise accept.
        assert!(serde_json::from_slice::<Outer>(b"[1]").is_ok());
        for bad in [
            &b"[1]"[..],
            br#"{"by": 1, "inner": [2]}"#,
            br#"{"by": 1, "ops": [["put", "k"]]}"#,
            br#"{"by": 1} x"#,
            b"1",
        ] {
            assert!(
                from_object::<Outer>(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let e = from_object::<Outer>(b"[1]").unwrap_err().to_string();
        assert!(e.contains("sequence"), "{e}");
    }
}
