"""Plain-torch tuning harness (same model code, no Lightning): python tune.py shape batches key=val..."""
import sys, time, json, torch
torch.set_num_threads(1)
from dgmrun.models.gan import GAN
from dgmrun.data.readers import sample_toy2d, toy2d_modes
from dgmrun.metrics.toy import mode_metrics
shape, batches = sys.argv[1], int(sys.argv[2])
kw = {}
for a in sys.argv[3:]:
    k, v = a.split("=", 1); kw[k] = json.loads(v)
cos = kw.pop("cosine", 0); seed = kw.pop("seed", 0); lr_d = kw.pop("lr_d", 2e-4); lr_g = kw.pop("lr_g", 2e-4); b1 = kw.pop("b1", 0.5)
torch.manual_seed(seed)
g = torch.Generator().manual_seed(seed)
data, _ = sample_toy2d(shape, 100000, g)
m = GAN({"name": "toy2d", "shape": [2], "num_classes": 8, "levels": None},
        optimizer_g={"lr": lr_g, "betas": (b1, 0.999)}, optimizer_d={"lr": lr_d, "betas": (b1, 0.999)}, **kw)
opt_d, opt_g = m.configure_optimizers()
scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=batches) for o in (opt_d, opt_g)] if cos else []
centers, std = toy2d_modes(shape)
t0 = time.time()
k = m.n_critic
for it in range(batches):
    idx = torch.randint(len(data), (256,))
    x = data[idx]
    l, _ = m.d_loss(x, None); opt_d.zero_grad(); l.backward(); opt_d.step()
    if m.loss_name == "wgan":
        with torch.no_grad():
            for p in m.discriminator.parameters(): p.clamp_(-m.clip, m.clip)
    if (it + 1) % k == 0:
        for p in m.discriminator.parameters(): p.requires_grad_(False)
        l, _ = m.g_loss(x, None); opt_g.zero_grad(); l.backward(); opt_g.step()
        for p in m.discriminator.parameters(): p.requires_grad_(True)
        if m.ema is not None: m.ema.update(m.generator)
    for sc in scheds: sc.step()
    if (it + 1) % (batches // 4) == 0:
        m.eval()
        s = m.sample(2500, torch.Generator().manual_seed(0))
        raw = m.generator(torch.randn(2500, m.latent_dim)).detach()
        m.train()
        print(it + 1, f"{time.time()-t0:.0f}s", "ema", mode_metrics(s, centers, std), "raw", mode_metrics(raw, centers, std), flush=True)
