#[runnel_sdk::map]
struct NotAFunction;

fn main() {}
