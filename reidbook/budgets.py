"""The book's time budget per chapter, in seconds, by notebook name (``make book`` prints each chapter's time
against its budget and the total).

Kept apart from :mod:`reidbook.profiles` (whose source is part of every run's key) as a presentation module:
planning the hour anew retrains nothing.

The ``cpu`` budgets share the book's hour on 2 cores. They were planned where the baseline trained at about
110 img/s (ResNet-18, last stride 1, 64x32, batches of 64, channels_last): a fine-tuning run (2 x 35 steps)
about 40 s, its evaluation on the default world 8-14 s, the pretraining (6 epochs of the 300-identity
pretraining world) about 5 minutes, once. Chapter 0 renders every world the book uses; chapter 1 pays for
the pretraining. Measured from fresh clones:

* 2026-11-30: chapters 0-4 took 92, 714, 297, 532 and 526 s.
* 2026-12-01, a day when runs trained at 64-85 img/s, with flip-averaged test features and stress worlds of
  100 test identities: the eight took 118, 905, 460, 922, 1005, 734, 1318 and 650 s (102 minutes).
* 2026-12-01, on a CPU where the pretraining ran at about 180 img/s, with ``test_flip=False`` and stress
  worlds of 60 test identities: chapters 0-6 took 53, 352, 153, 301, 382, 242 and 453 s, each within its
  budget (chapter 7's time was lost with that session).
* 2026-12-02, the same code on a 2-core AMD EPYC without AVX-512 (about 70 img/s): 128, 928, 362, 734,
  779, 652, 1152 and 486 s, 92 minutes in all including the install; seven chapters over budget.
* 2026-12-02, on a 2-core CPU with AVX-512 (about 190 img/s): 60, 371, 138, 250, 322, 239, 429 and 207 s,
  2,034 s with the HTML build and 36 min 28 s including the install; every chapter within its budget.

The hour therefore holds on the faster of the CPUs this machine type is given, not on the slower one.
"""

CPU_BUDGETS = {
    "00_world_and_protocol": 120,
    "01_baseline": 720,
    "02_ianet": 420,
    "03_pyramid": 540,
    "04_ipad": 540,
    "05_ddag": 420,
    "06_qaconv_tlift": 480,
    "07_comparison": 360,
}

#: The smoke profile: every chapter within 90 s (``make test`` runs them all).
SMOKE_BUDGETS = dict.fromkeys(CPU_BUDGETS, 90)
