// Softmax cross-entropy over integer labels.
//
//   logits x: (N, K), labels: (N)
//   per row:  lse = max + log Σ_k e^(x_k − max)   (stable: exponents ≤ 0)
//             loss_n = lse − x[label],  correct_n = [first argmax == label]
//             grad[n, k] = (e^(x_k − lse) − [k == label]) / N
//   totals:   loss = Σ loss_n / N,  correct = Σ correct_n
//             (one workgroup, tree reduction: deterministic)
// A label ≥ K makes that row's loss NaN, so a bad label cannot pass silently.

struct Params {
    rows: u32,
    classes: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// ---- per row ----
@group(0) @binding(1) var<storage, read> row_logits: array<f32>;
@group(0) @binding(2) var<storage, read> row_labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> row_grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> row_loss: array<f32>;
@group(0) @binding(5) var<storage, read_write> row_correct: array<f32>;

@compute @workgroup_size(64)
fn rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let n = (wid.x + wid.y * nwg.x) * 64u + lid.x;
    if n >= p.rows {
        return;
    }
    let base = n * p.classes;
    var best = row_logits[base];
    var best_k = 0u;
    for (var k = 1u; k < p.classes; k++) {
        let v = row_logits[base + k];
        if v > best {
            best = v;
            best_k = k;
        }
    }
    var total = 0.0;
    for (var k = 0u; k < p.classes; k++) {
        total += exp(row_logits[base + k] - best);
    }
    let lse = best + log(total);
    let label = row_labels[n];
    let inv_rows = 1.0 / f32(p.rows);
    for (var k = 0u; k < p.classes; k++) {
        let prob = exp(row_logits[base + k] - lse);
        row_grad[base + k] = (prob - select(0.0, 1.0, k == label)) * inv_rows;
    }
    if label < p.classes {
        row_loss[n] = lse - row_logits[base + label];
    } else {
        row_loss[n] = bitcast<f32>(0x7fc00000u);
    }
    row_correct[n] = select(0.0, 1.0, best_k == label);
}

// ---- totals ----
@group(0) @binding(1) var<storage, read> total_loss_in: array<f32>;
@group(0) @binding(2) var<storage, read> total_correct_in: array<f32>;
@group(0) @binding(3) var<storage, read_write> total_loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> total_correct: array<f32>;

// One workgroup; workgroup_sum is workgroup_sum.wgsl's or its subgroup
// twin's, put in front of this module.
@compute @workgroup_size(WG)
fn totals(id: Invocation) {
    let lid = id.lid;
    var loss = 0.0;
    var correct = 0.0;
    for (var n = lid.x; n < p.rows; n += WG) {
        loss += total_loss_in[n];
        correct += total_correct_in[n];
    }
    let total = workgroup_sum(id, vec2<f32>(loss, correct));
    if lid.x == 0u {
        total_loss[0] = total.x / f32(p.rows);
        total_correct[0] = total.y;
    }
}
