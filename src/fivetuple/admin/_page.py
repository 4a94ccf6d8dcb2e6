PAGE_HTML = "<!doctype html><title>fivetuple</title><p>page coming"
