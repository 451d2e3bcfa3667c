//! `not-http`: a valid component (a wasi:cli command) that does not export
//! `wasi:http/incoming-handler`, so an upload must be refused with 422.

fn main() {
    println!("I am a command, not an HTTP handler");
}
