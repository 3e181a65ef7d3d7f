import time, torch, sys
torch.set_num_threads(1)
import lightning.pytorch as pl
from dgmrun.models.gan import GAN
from dgmrun.data.datamodule import Toy2D
dm = Toy2D(num_train=256*300, num_val=64, num_test=64, seed=0)
m = GAN({"name":"toy2d","shape":[2],"num_classes":8,"levels":None})
if sys.argv[1] == "nolog":
    m.log_dict = lambda *a, **k: None; m.log = lambda *a, **k: None
t = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, max_epochs=1, log_every_n_steps=10)
t0 = time.time(); t.fit(m, datamodule=dm); print(sys.argv[1], (time.time()-t0)/300*1000, "ms/batch")
