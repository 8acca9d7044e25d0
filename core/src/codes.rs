//! One declaration per catalogue of stable codes: the macro below writes, from a
//! single table of `Variant => "code"`, the exhaustive `code()` (Rust, Python,
//! Node, JSON) and `c_code()` (the same text, NUL-terminated, for the C ABI), so
//! no front end keeps its own copy of the names or needs a wildcard arm.

/// `codes!(Type { Variant => "code", ... })`: `Type::ALL`, `Type::code()` and
/// `Type::c_code()`.
macro_rules! codes {
    ($ty:ident { $($variant:ident => $code:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// A stable snake_case name.
            pub const fn code(self) -> &'static str {
                match self {
                    $(Self::$variant => $code),+
                }
            }

            /// [`code`](Self::code), NUL-terminated (for the C ABI).
            pub const fn c_code(self) -> &'static std::ffi::CStr {
                match self {
                    $(Self::$variant => match std::ffi::CStr::from_bytes_with_nul(
                        concat!($code, "\0").as_bytes(),
                    ) {
                        Ok(c) => c,
                        Err(_) => c"",
                    }),+
                }
            }
        }
    };
}

pub(crate) use codes;
