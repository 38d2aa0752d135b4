use runnel_sdk::Record;

#[runnel_sdk::filter]
fn keep(record: &Record) -> bool {
    record.value().is_some()
}

fn main() {}
