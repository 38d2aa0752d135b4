//! A processor that does to its state what each record's value says, and
//! emits what it found: the engine's state tests drive it, benign and
//! hostile alike. Words are split on spaces; stores are of text keys and
//! text values, in the store `main` unless a command names another.
//!
//! | value | does | emits |
//! |---|---|---|
//! | `put K V` | sets K to V | `ok` |
//! | `get K` | reads K | V or `none` |
//! | `many K1 K2 ..` | reads the keys with one `get-many` | `V1,none,..` |
//! | `del K` | deletes K | `ok` |
//! | `count K` | adds one to K's count and emits it | the count |
//! | `scan PREFIX N` | pages through the keys under PREFIX, N a page | `k=v,..` |
//! | `open NAME` | opens store NAME | `ok` |
//! | `put-then-fail K V` | sets K to V, then fails the record | (a failure) |
//! | `put-then-panic K V` | sets K to V, then panics | (a trap) |
//! | `big-key N` | puts a key of N bytes | `ok` |
//! | `big-value N` | puts a value of N bytes | `ok` |
//! | `flood N [TAG]` | puts N keys (`flood-TAG-i`) of 1 KiB values in one record | `ok` |
//! | `many-keys N` | one `get-many` of N keys | the number of values |
//! | `scan-all N` | one scan page of N entries over every key | the number of entries |

use runnel_sdk::{Output, ProcessorContext, Record, Result, bail};

#[runnel_sdk::processor]
fn probe(record: &Record, ctx: &mut ProcessorContext) -> Result<Vec<Output>> {
    let text = record.value_str()?;
    let words: Vec<&str> = text.split(' ').collect();
    let main = ctx.store::<str, String>("main")?;
    let n = |i: usize| -> Result<usize> { Ok(words.get(i).copied().unwrap_or("0").parse()?) };
    let out: String = match words.as_slice() {
        ["put", k, v] => {
            main.put(k, &(*v).to_owned())?;
            "ok".into()
        }
        ["get", k] => main.get(k)?.unwrap_or_else(|| "none".into()),
        ["many", keys @ ..] => main
            .get_many(keys.iter().copied())?
            .into_iter()
            .map(|v| v.unwrap_or_else(|| "none".into()))
            .collect::<Vec<_>>()
            .join(","),
        ["del", k] => {
            main.delete(k)?;
            "ok".into()
        }
        ["count", k] => {
            let counts = ctx.store::<str, u64>("counts")?;
            let c = counts.get(k)?.unwrap_or(0) + 1;
            counts.put(k, &c)?;
            c.to_string()
        }
        ["scan", prefix, _] => {
            let mut page = main.prefix(prefix, n(2)? as u32)?;
            let mut all = Vec::new();
            loop {
                all.extend(page.entries.into_iter().map(|(k, v)| format!("{k}={v}")));
                match page.cursor {
                    Some(c) => page = main.resume(&c, n(2)? as u32)?,
                    None => break,
                }
            }
            all.join(",")
        }
        ["open", name] => {
            ctx.store::<str, String>(name)?;
            "ok".into()
        }
        ["put-then-fail", k, v] => {
            main.put(k, &(*v).to_owned())?;
            bail!("asked to fail after a put");
        }
        ["put-then-panic", k, v] => {
            main.put(k, &(*v).to_owned())?;
            panic!("asked to panic after a put");
        }
        ["big-key", _] => {
            main.put(&"k".repeat(n(1)?), &String::new())?;
            "ok".into()
        }
        ["big-value", _] => {
            main.put("big", &"v".repeat(n(1)?))?;
            "ok".into()
        }
        ["flood", _] | ["flood", _, _] => {
            let value = "v".repeat(1024);
            let tag = words.get(2).copied().unwrap_or("");
            for i in 0..n(1)? {
                main.put(&format!("flood-{tag}-{i:06}"), &value)?;
            }
            "ok".into()
        }
        ["many-keys", _] => {
            let keys: Vec<String> = (0..n(1)?).map(|i| format!("k{i}")).collect();
            let got = main.get_many(keys.iter().map(String::as_str))?;
            got.len().to_string()
        }
        ["scan-all", _] => main
            .range(None, None, n(1)? as u32)?
            .entries
            .len()
            .to_string(),
        _ => bail!("unknown command {text:?}"),
    };
    Ok(vec![Output::new(out).with_key_opt(record.key())])
}
