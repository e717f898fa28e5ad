"""SAEs on a real language model's activations (notebooks 04-08): needs the ``lm`` extra.

    models       load_lm: GPT-2 small when online, the bundled stand-in offline, with a banner
    text         token windows from the stand-in's corpus or web text, train / held-out splits
    activations  run_to_hook, and a resumable on-disk activation cache with a shuffling buffer
    evaluation   splice_eval (CE loss recovered, KL), per_token_ce, latent_density
    dashboard    feature dashboards: top contexts, logit effects, density
    steering     steering by adding a latent's direction, the latent chosen by what it fires on,
                 mean-difference / unembedding controls; ablation against matched-norm controls
    splitting    feature splitting across widths: children, firing recall / precision / F1
    autointerp   offline explainers and simulators, detection / fuzzing scores; opt-in LLM clients
    probing      labels for properties of the text, k-sparse probes on latents vs residual dims
    absorption   feature absorption (Chanin et al. 2024): main latents, absorption rate
    references   reference SAEs shipped for the stand-in (load_reference); published GPT-2 SAEs
                 through SAELens (load_pretrained)
    lab          Lab: one model, one layer, one activation cache, SAEs trained once and cached
    validate     input checks (hook names, token ids, latents, finite values) and device helpers

Imports point down only: lm uses the core (base, variants, train, metrics, io), never course/.
"""
