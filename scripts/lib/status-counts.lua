-- wrk script (scripts/load_test.sh -d): counts the answers by HTTP status,
-- so quota refusals (429) are told apart from other errors. Prints one
-- `status CODE: COUNT` line per status seen, at the end.
local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    statuses = {}
end

function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
    local total = {}
    for _, thread in ipairs(threads) do
        for code, count in pairs(thread:get("statuses")) do
            total[code] = (total[code] or 0) + count
        end
    end
    for code, count in pairs(total) do
        io.write(string.format("status %d: %d\n", code, count))
    end
end
