//! Writes many distinct functions and a table of them, so the component
//! carries megabytes of code and takes its host seconds to compile.

use std::fmt::Write as _;

/// Functions generated; with their bodies, about 1.4 MB of WebAssembly.
const FUNCTIONS: u64 = 4000;

fn main() {
    let mut code = String::new();
    for i in 0..FUNCTIONS {
        let (a, b, c) = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15), i * 31 + 7, i % 61 + 1);
        writeln!(
            code,
            "#[inline(never)] fn f{i}(x: u64) -> u64 {{
                let mut a = x ^ {a:#x};
                let mut b = x.wrapping_add({b});
                for r in 0..(x & 7) {{
                    a = a.wrapping_mul({b} | 1).rotate_left({c}) ^ b;
                    b = b.wrapping_add(a >> 3).wrapping_sub(r);
                    if a % 3 == 0 {{ b ^= {a:#x}; }} else if a % 5 == 1 {{ a = a.wrapping_add({c}); }}
                }}
                match (a ^ b) % 7 {{
                    0 => a ^ b,
                    1 => a.wrapping_sub(b).rotate_right({c}),
                    2 => b.wrapping_mul({c}),
                    3 => (a | {b}) & (b | {c}),
                    4 => a.wrapping_add(b).wrapping_add({i}),
                    5 => a.rotate_left(7) ^ b.rotate_right(11),
                    _ => !a ^ {a:#x},
                }}
            }}"
        )
        .unwrap();
    }
    code.push_str("static TABLE: [fn(u64) -> u64; ");
    write!(code, "{FUNCTIONS}] = [").unwrap();
    for i in 0..FUNCTIONS {
        write!(code, "f{i},").unwrap();
    }
    code.push_str("];\n");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("functions.rs");
    std::fs::write(out, code).unwrap();
}
