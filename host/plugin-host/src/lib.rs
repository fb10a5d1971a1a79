//! Plugin runtime: loads WebAssembly components, enforces limits and capability grants,
//! and reaches the studio only through the host-services trait it defines.
