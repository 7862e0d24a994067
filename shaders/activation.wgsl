// The activation a kernel's epilogue applies (prepended to the GEMM and
// direct-convolution sources): mode 0 none, 1 relu, 2 leaky relu with
// `slope`, written as elementwise.wgsl's (a NaN passes through either).
fn fused_activation(v: vec4<f32>, mode: u32, slope: f32) -> vec4<f32> {
    if mode == 1u {
        return select(v, vec4<f32>(0.0), v <= vec4<f32>(0.0));
    }
    if mode == 2u {
        return select(slope * v, v, v > vec4<f32>(0.0));
    }
    return v;
}
