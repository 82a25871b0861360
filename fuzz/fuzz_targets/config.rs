//! The plugin configuration: raw bytes, and configurations built from the valid one by changing
//! one field to an arbitrary JSON value.
#![no_main]
use arbitrary::Arbitrary;
use certbound_fuzz::Json;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(Vec<u8>),
    Edit {
        format: u8,
        section: u8,
        field: String,
        value: Json,
    },
}

fuzz_target!(|input: Input| {
    // The secret of the valid configuration may be named in an error only if the input put it
    // into a name or a value of its own.
    let secret_may_show;
    let raw = match input {
        Input::Raw(bytes) => {
            secret_may_show = true;
            bytes
        }
        Input::Edit {
            format,
            section,
            field,
            value,
        } => {
            secret_may_show = field.contains("s3cret") || value.0.to_string().contains("s3cret");
            let mut v = certbound_fuzz::config_json(format);
            let sections = ["", "introspection", "jwt", "cache", "routes"];
            match sections[usize::from(section) % sections.len()] {
                "" => v[&field] = value.0,
                "routes" => v["routes"][0][&field] = value.0,
                s => v[s][&field] = value.0,
            }
            v.to_string().into_bytes()
        }
    };
    if let Err(e) = certbound::config::parse(&raw) {
        // An error goes into a log line: no control character, and no value of the configuration.
        assert!(!e.0.chars().any(char::is_control), "{e:?}");
        assert!(secret_may_show || !e.0.contains("s3cret"), "{e:?}");
    }
});
