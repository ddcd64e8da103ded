//! Fuzzes the document parser with whatever text an operator (or an attacker with a token) can
//! send: parsing must end in a document or an error naming the problem, never a panic, an
//! alias expansion or a hang; a parsed document must resolve with its defaults.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(doc) = drover_docs::parse(text) else {
        return;
    };
    if let Ok(values) = drover_docs::validate_values(&doc, &Default::default()) {
        let _ = drover_docs::resolve(&doc, &values);
    }
});
