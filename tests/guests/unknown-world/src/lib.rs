//! A valid component of a world runnel does not know.

wit_bindgen::generate!({
    inline: "
        package test:other;
        world greeter {
            export greet: func(name: string) -> string;
        }
    ",
    world: "greeter",
});

struct Component;

impl Guest for Component {
    fn greet(name: String) -> String {
        format!("hello {name}")
    }
}

export!(Component);
