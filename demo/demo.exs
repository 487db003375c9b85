# make demo: a local 3-node cluster, replicated through Drove: (1) a Drove.CRDT map,
# (2) a Drove.Registry of 30 named agents, one node leaving gracefully, (3) a
# Drove.DynamicSupervisor of 300 workers: placement, a killed node's failover, a graceful handoff.
# Started by the Makefile as: elixir --name demo@127.0.0.1 --cookie drove -S mix run demo/demo.exs
defmodule Demo do
  @moduledoc false

  # Starts peers demo<i>_<unique>@127.0.0.1 for each i, in parallel, with :drove running.
  def start_nodes(indices) do
    args =
      Enum.flat_map(:code.get_path(), &[~c"-pa", &1]) ++
        [~c"-setcookie", Atom.to_charlist(Node.get_cookie())] ++
        [~c"-kernel", ~c"prevent_overlapping_partitions", ~c"false"]

    indices
    |> Task.async_stream(
      fn i ->
        {:ok, _pid, node} =
          :peer.start(%{
            name: :"demo#{i}_#{System.unique_integer([:positive])}",
            host: ~c"127.0.0.1",
            longnames: true,
            args: args
          })

        {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:drove])
        :erpc.call(node, Code, :compile_string, [remote_src()])
        node
      end,
      timeout: 60_000
    )
    |> Enum.map(fn {:ok, node} -> node end)
  end

  # demo1_1234@127.0.0.1 -> "demo1"
  def short(node), do: node |> Atom.to_string() |> String.split("_") |> hd()

  def say(msg), do: IO.puts("#{clock()}  #{msg}")

  defp clock do
    {{_, _, _}, {h, m, s}} = :calendar.local_time()
    :io_lib.format("~2..0B:~2..0B:~2..0B", [h, m, s]) |> to_string()
  end

  # runs on the peers (compiled there from source below)
  def remote_src do
    ~S"""
    defmodule Demo.Remote do
      def start(name, neighbours) do
        {:ok, _} = GenServer.start(Drove.CRDT, [name: name, neighbours: neighbours], name: name)
        :ok
      end

      def write(name, n) do
        Enum.each(1..n, fn i -> Drove.CRDT.put(name, {:agent, i}, %{node: node(), n: i}) end)
        System.os_time(:microsecond)
      end

      def write_tag(name, tag, n) do
        Enum.each(1..n, fn i -> Drove.CRDT.put(name, {tag, i}, i) end)
      end

      def wait_size(name, n) do
        if Drove.CRDT.info(name).size >= n,
          do: System.os_time(:microsecond),
          else: (Process.sleep(1); wait_size(name, n))
      end

      # The registry runs under the :drove application's supervisor, so that :init.stop
      # stops it gracefully (it then removes its own node's registrations everywhere).
      def start_registry(nodes) do
        members = for n <- nodes, do: {Demo.Registry, n}
        spec = {Drove.Registry, name: Demo.Registry, keys: :unique, members: members}
        {:ok, _} = Supervisor.start_child(Drove.Supervisor, spec)
        :ok
      end

      def start_agents(names), do: Enum.map(names, &Demo.Agent.start/1)

      # the node each agent runs on, as this node's registry sees it (nil: not found)
      def owners(names) do
        for name <- names do
          case Drove.Registry.lookup(Demo.Registry, name) do
            [{pid, _}] -> node(pid)
            [] -> nil
          end
        end
      end

      def wait_count(n) do
        if Drove.Registry.count(Demo.Registry) == n,
          do: System.os_time(:microsecond),
          else: (Process.sleep(1); wait_count(n))
      end
    end

    # Part 3: a Drove.DynamicSupervisor whose workers register in a Drove.Registry.
    defmodule Demo.Remote3 do
      @procs :"Elixir.Demo.Sup.ProcessesSupervisor"

      # Both under the :drove application's supervisor (registry first, so that on a graceful
      # stop the supervisor hands its children over while the registry still runs).
      def start(nodes) do
        registry =
          {Drove.Registry,
           id: Demo.Registry2,
           name: Demo.Registry2,
           keys: :unique,
           members: for(n <- nodes, do: {Demo.Registry2, n})}

        sup =
          {Drove.DynamicSupervisor,
           name: Demo.Sup, strategy: :one_for_one, members: for(n <- nodes, do: {Demo.Sup, n})}

        {:ok, _} = Supervisor.start_child(Drove.Supervisor, registry)
        {:ok, _} = Supervisor.start_child(Drove.Supervisor, sup)
        :ok
      end

      # the nodes of the members this node's Demo.Sup sees as :alive
      def alive_members do
        for {{Demo.Sup, n}, %{status: :alive}} <- :sys.get_state(Demo.Sup).members_info,
            do: n
      end

      # {microseconds, results} of starting one worker per name, one after the other
      def start_workers(names) do
        t0 = System.monotonic_time(:microsecond)

        results =
          for name <- names do
            spec = %{id: name, start: {Demo.Worker, :start_link, [name]}, restart: :permanent}
            Drove.DynamicSupervisor.start_child(Demo.Sup, spec)
          end

        {System.monotonic_time(:microsecond) - t0, results}
      end

      # the workers this node's DynamicSupervisor runs
      def local_count, do: DynamicSupervisor.count_children(@procs).active

      def local_pids do
        for {_, pid, _, _} <- DynamicSupervisor.which_children(@procs), is_pid(pid), do: pid
      end

      # the ids of the replicated child entries, and the nodes of their owners
      def child_ids,
        do: GenServer.call(Demo.Sup, :children) |> Enum.map(&elem(&1, 0)) |> Enum.sort()

      def child_owners do
        for {_id, owner, _spec, _pid} <- GenServer.call(Demo.Sup, :children) do
          case owner do
            {Demo.Sup, n} -> n
            nil -> nil
          end
        end
      end

      # the pid each name resolves to on this node (nil: not found)
      def resolve(names) do
        for name <- names do
          case Drove.Registry.lookup(Demo.Registry2, name) do
            [{pid, _}] -> pid
            [] -> nil
          end
        end
      end

      def all_alive?(pids), do: Enum.all?(pids, &Process.alive?/1)

      # Waits until every name resolves here to a live pid on one of `nodes`; returns
      # {:ok, os_time_us} or, past `deadline` (os time, us), {:timeout, names_not_yet_there}.
      def wait_resolved(names, nodes, deadline) do
        pids = resolve(names)

        if Enum.all?(pids, &(is_pid(&1) and node(&1) in nodes)) and alive?(pids) do
          {:ok, System.os_time(:microsecond)}
        else
          if System.os_time(:microsecond) > deadline do
            missing =
              for {name, pid} <- Enum.zip(names, pids),
                  not is_pid(pid) or node(pid) not in nodes,
                  do: name

            {:timeout, missing}
          else
            Process.sleep(1)
            wait_resolved(names, nodes, deadline)
          end
        end
      end

      defp alive?(pids) do
        pids
        |> Enum.group_by(&node/1)
        |> Enum.all?(fn
          {n, ps} when n == node() -> all_alive?(ps)
          {n, ps} -> :erpc.call(n, __MODULE__, :all_alive?, [ps])
        end)
      end
    end

    defmodule Demo.Worker do
      use GenServer

      def start_link(name) do
        via = {:via, Drove.Registry, {Demo.Registry2, name}}
        GenServer.start_link(__MODULE__, name, name: via)
      end

      @impl true
      def init(name), do: {:ok, name}
    end

    defmodule Demo.Agent do
      use GenServer

      def start(name),
        do: GenServer.start(__MODULE__, name, name: {:via, Drove.Registry, {Demo.Registry, name}})

      @impl true
      def init(name), do: {:ok, name}

      @impl true
      def handle_call(:hello, _from, name), do: {:reply, "#{name} here, on #{node()}", name}
    end
    """
  end

  def run do
    unless Node.alive?(), do: raise("run me through `make demo` (needs a distributed node)")
    say("starting 3 local nodes on 127.0.0.1 ...")
    nodes = [a, b, c] = start_nodes(1..3)
    say("nodes: #{inspect(nodes)}")
    IO.puts("")
    say("== 1. Drove.CRDT: a replicated map ==")

    for n <- nodes do
      :ok =
        :erpc.call(n, Demo.Remote, :start, [
          :demo_map,
          for(m <- nodes, m != n, do: {:demo_map, m})
        ])
    end

    say("a Drove.CRDT replica named :demo_map runs on each node, neighbours of each other")

    count = 50_000

    waits =
      for n <- [b, c],
          do:
            Task.async(fn ->
              {n, :erpc.call(n, Demo.Remote, :wait_size, [:demo_map, count], 60_000)}
            end)

    t0 = System.os_time(:microsecond)
    t_last = :erpc.call(a, Demo.Remote, :write, [:demo_map, count], 60_000)
    seen = Enum.map(waits, &Task.await(&1, 60_000))
    say("wrote #{count} keys on #{a} in #{ms(t_last - t0)} ms")

    for {n, t} <- seen do
      say("  #{n} holds all #{count} keys #{ms(t - t_last)} ms after the last write")
    end

    sample = :erpc.call(c, Drove.CRDT, :get, [:demo_map, {:agent, 42}])
    say("read on #{c}: {:agent, 42} => #{inspect(sample)}")

    :erpc.call(b, Drove.CRDT, :delete, [:demo_map, {:agent, 42}])
    wait(fn -> :erpc.call(a, Drove.CRDT, :get, [:demo_map, {:agent, 42}]) == nil end)
    say("deleted {:agent, 42} on #{b}: gone on #{a} too")

    say(
      "killing #{c}, writing 1000 more keys on #{a}, restarting a fresh replica on a new node ..."
    )

    :erpc.cast(c, :erlang, :halt, [])
    wait(fn -> c not in Node.list() end)
    :erpc.call(a, Demo.Remote, :write_tag, [:demo_map, :late, 1000])
    [d] = start_nodes([4])
    t1 = System.os_time(:microsecond)
    :ok = :erpc.call(d, Demo.Remote, :start, [:demo_map, [{:demo_map, a}, {:demo_map, b}]])
    t2 = :erpc.call(d, Demo.Remote, :wait_size, [:demo_map, count - 1 + 1000], 60_000)
    say("#{d} caught up #{count - 1 + 1000} keys in #{ms(t2 - t1)} ms (anti-entropy)")

    sizes = for n <- [a, b, d], do: {n, :erpc.call(n, Drove.CRDT, :info, [:demo_map]).size}
    say("sizes: #{inspect(sizes)}")

    registry([a, b, d])
    dynamic_supervisor()
    say("done.")
  end

  # Part 2: Drove.Registry on the 3 live nodes; 30 agents by name; one node leaves.
  defp registry(nodes) do
    [x, y, z] = nodes
    IO.puts("")
    say("== 2. Drove.Registry: 30 agents by name on #{Enum.map_join(nodes, ", ", &short/1)} ==")
    Enum.each(nodes, &(:ok = :erpc.call(&1, Demo.Remote, :start_registry, [nodes])))
    say("a Drove.Registry named Demo.Registry runs on each node (members: all three)")

    names = for i <- 1..30, do: "agent-" <> String.pad_leading("#{i}", 2, "0")
    # agent-01 on the first node, agent-02 on the second, ...
    placed = Enum.group_by(Enum.with_index(names), fn {_, i} -> Enum.at(nodes, rem(i, 3)) end)

    waits = for n <- nodes, do: Task.async(fn -> {n, wait_count(n, 30)} end)
    t0 = System.os_time(:microsecond)

    for {n, named} <- placed do
      started = :erpc.call(n, Demo.Remote, :start_agents, [Enum.map(named, &elem(&1, 0))])
      true = Enum.all?(started, &match?({:ok, _}, &1))
    end

    t1 = System.os_time(:microsecond)
    say("started 30 agents (10 per node) with {:via, Drove.Registry, ...} in #{ms(t1 - t0)} ms")

    for {n, t} <- Enum.map(waits, &Task.await(&1, 30_000)) do
      say("  #{short(n)} resolves all 30 names #{ms(t - t0)} ms after the first start")
    end

    sample = ["agent-01", "agent-02", "agent-03", "agent-17", "agent-30"]
    seen = Map.new(nodes, &{&1, :erpc.call(&1, Demo.Remote, :owners, [sample])})
    say("where each agent runs, as seen from each node:")
    table(["agent" | Enum.map(nodes, &"seen from #{short(&1)}")], sample, nodes, seen)

    agree = seen |> Map.values() |> Enum.uniq() |> length() == 1
    say("  all three nodes agree: #{agree}")

    via = {:via, Drove.Registry, {Demo.Registry, "agent-03"}}
    reply = :erpc.call(x, GenServer, :call, [via, :hello])
    say("GenServer.call(via \"agent-03\", :hello) from #{short(x)}: #{inspect(reply)}")
    {:error, {:already_started, pid}} = :erpc.call(x, Demo.Agent, :start, ["agent-02"])

    say(
      "starting \"agent-02\" again on #{short(x)}: {:error, {:already_started, pid on #{short(node(pid))}}}"
    )

    # z leaves gracefully: its registry removes its own names on the way out
    mine = for {name, _} <- placed[z], do: name
    others = names -- mine
    IO.puts("")

    say(
      "stopping #{short(z)} gracefully (:init.stop) - it runs #{length(mine)} of the agents ..."
    )

    waits = for n <- [x, y], do: Task.async(fn -> {n, wait_count(n, 20)} end)
    t2 = System.os_time(:microsecond)
    :erpc.cast(z, :init, :stop, [])
    wait(fn -> z not in Node.list() end)
    t3 = System.os_time(:microsecond)

    gone_at = Enum.map(waits, &Task.await(&1, 30_000))

    for {n, t} <- gone_at do
      say(
        "  #{short(n)}: the #{length(mine)} names of #{short(z)} gone #{ms(t - t2)} ms after :init.stop"
      )
    end

    say("  #{short(z)} left Node.list #{ms(t3 - t2)} ms after :init.stop")

    if Enum.all?(gone_at, fn {_, t} -> t < t3 end) do
      say("  (its registry removed its own names on the way out, before the node disconnected)")
    end

    for n <- [x, y] do
      count = :erpc.call(n, Drove.Registry, :count, [Demo.Registry])
      found = :erpc.call(n, Demo.Remote, :owners, [mine]) |> Enum.count(&(&1 != nil))
      kept = :erpc.call(n, Demo.Remote, :owners, [others]) |> Enum.count(&(&1 in [x, y]))

      say(
        "  #{short(n)} now has #{count} agents: #{found}/#{length(mine)} of #{short(z)}'s " <>
          "names resolve, #{kept}/#{length(others)} of the others do"
      )
    end

    say("after #{short(z)} left:")
    seen = Map.new([x, y], &{&1, :erpc.call(&1, Demo.Remote, :owners, [sample])})
    table(["agent" | Enum.map([x, y], &"seen from #{short(&1)}")], sample, [x, y], seen)
  end

  # Part 3: Drove.DynamicSupervisor on 3 new nodes; 300 workers; one node killed, one stopped.
  defp dynamic_supervisor do
    IO.puts("")
    say("== 3. Drove.DynamicSupervisor: placement and failover ==")
    say("starting 3 new local nodes ...")
    nodes = [x, y, z] = start_nodes([5, 6, 7])
    t0 = System.os_time(:microsecond)
    Enum.each(nodes, &(:ok = :erpc.call(&1, Demo.Remote3, :start, [nodes])))

    wait_until("all 3 members :alive on every node", fn ->
      Enum.all?(
        nodes,
        &(Enum.sort(:erpc.call(&1, Demo.Remote3, :alive_members, [])) == Enum.sort(nodes))
      )
    end)

    say(
      "a Drove.Registry (Demo.Registry2) and a Drove.DynamicSupervisor (Demo.Sup) run on " <>
        "#{Enum.map_join(nodes, ", ", &short/1)}; all 3 members :alive everywhere " <>
        "#{ms(System.os_time(:microsecond) - t0)} ms after start"
    )

    n = 300
    names = for i <- 1..n, do: "worker-" <> String.pad_leading("#{i}", 3, "0")
    {us, results} = :erpc.call(x, Demo.Remote3, :start_workers, [names], 60_000)

    check!(
      Enum.all?(results, &match?({:ok, _}, &1)),
      "start_child results: #{inspect(Enum.uniq(results) |> Enum.take(3))}"
    )

    say(
      "started #{n} workers through #{short(x)} with Drove.DynamicSupervisor.start_child " <>
        "in #{ms(us)} ms (#{Float.round(us / n / 1000, 2)} ms each)"
    )

    say("  placement (Drove.Distribution.Uniform), workers run per node: #{counts(nodes)}")

    # before the faults: every node resolves every name and holds every child entry
    for node <- nodes, do: wait_resolved(node, names, nodes)

    wait_until("#{n} child entries on every node", fn ->
      Enum.all?(nodes, &(length(:erpc.call(&1, Demo.Remote3, :child_ids, [])) == n))
    end)

    ids = :erpc.call(x, Demo.Remote3, :child_ids, [])

    check!(
      Enum.all?(nodes, &(:erpc.call(&1, Demo.Remote3, :child_ids, []) == ids)),
      "child ids differ between nodes"
    )

    say("  all 3 nodes resolve all #{n} names and hold the same #{n} replicated child ids")

    # y is killed: its workers are taken over by x and z
    IO.puts("")
    on_y = :erpc.call(y, Demo.Remote3, :local_count, [])
    say("killing #{short(y)} abruptly (:erlang.halt) - it runs #{on_y} of the workers ...")
    survivors = [x, z]
    t1 = System.os_time(:microsecond)
    :erpc.cast(y, :erlang, :halt, [])
    waits = for s <- survivors, do: Task.async(fn -> {s, wait_resolved(s, names, survivors)} end)

    on = Enum.map_join(survivors, " / ", &short/1)

    for {s, t} <- Enum.map(waits, &Task.await(&1, 60_000)) do
      say(
        "  #{short(s)} resolves all #{n} names to live workers on #{on} #{ms(t - t1)} ms after the halt"
      )
    end

    check_once(survivors, names)

    wait_until("every child entry owned by a survivor", fn ->
      Enum.all?(
        survivors,
        &Enum.all?(:erpc.call(&1, Demo.Remote3, :child_owners, []), fn o -> o in survivors end)
      )
    end)

    check!(
      Enum.all?(survivors, &(:erpc.call(&1, Demo.Remote3, :child_ids, []) == ids)),
      "child ids changed by the failover"
    )

    say(
      "  #{n} child ids before, same #{n} after (on #{Enum.map_join(survivors, " and ", &short/1)})"
    )

    # z leaves gracefully: it hands its workers over to x
    IO.puts("")
    on_z = :erpc.call(z, Demo.Remote3, :local_count, [])
    say("stopping #{short(z)} gracefully (:init.stop) - it runs #{on_z} of the workers ...")
    t2 = System.os_time(:microsecond)
    :erpc.cast(z, :init, :stop, [])
    t3 = wait_resolved(x, names, [x])

    wait_until("all #{n} workers running on #{short(x)}", fn ->
      :erpc.call(x, Demo.Remote3, :local_count, []) == n
    end)

    t4 = System.os_time(:microsecond)
    wait(fn -> z not in Node.list() end)
    t5 = System.os_time(:microsecond)

    say(
      "  #{short(x)} resolves all #{n} names to its own workers #{ms(t3 - t2)} ms after :init.stop"
    )

    say("  all #{n} run on #{short(x)} #{ms(t4 - t2)} ms after :init.stop (handoff)")
    say("  #{short(z)} left Node.list #{ms(t5 - t2)} ms after :init.stop")
    check_once([x], names)
    check!(:erpc.call(x, Demo.Remote3, :child_ids, []) == ids, "child ids changed by the handoff")
    say("  still the same #{n} child ids")
  end

  # "demo5 101, demo6 99, ..." from each node's own DynamicSupervisor
  defp counts(nodes) do
    Enum.map_join(nodes, ", ", &"#{short(&1)} #{:erpc.call(&1, Demo.Remote3, :local_count, [])}")
  end

  # waits until `node` resolves every name to a live worker on `nodes`; returns the os time
  defp wait_resolved(node, names, nodes) do
    deadline = System.os_time(:microsecond) + 30_000_000

    case :erpc.call(node, Demo.Remote3, :wait_resolved, [names, nodes, deadline], 60_000) do
      {:ok, t} ->
        t

      {:timeout, missing} ->
        raise "#{short(node)}: #{length(missing)} names not resolved on #{inspect(nodes)} " <>
                "after 30 s, e.g. #{inspect(Enum.take(missing, 5))}"
    end
  end

  # Each name resolves to a distinct pid, and those are exactly the pids the nodes' local
  # DynamicSupervisors run: no worker runs twice or unnamed. Prints the local counts.
  defp check_once(nodes, names) do
    n = length(names)
    resolved = :erpc.call(hd(nodes), Demo.Remote3, :resolve, [names]) |> Enum.sort()
    check!(length(Enum.uniq(resolved)) == n, "a pid is registered under two names")
    running = fn -> Enum.flat_map(nodes, &:erpc.call(&1, Demo.Remote3, :local_pids, [])) end
    t0 = System.monotonic_time(:microsecond)
    # a copy the replicas decided against would take a moment to stop: say so if one did
    wait_until("each worker running exactly once", fn -> Enum.sort(running.()) == resolved end)
    waited = System.monotonic_time(:microsecond) - t0
    sum = nodes |> Enum.map(&:erpc.call(&1, Demo.Remote3, :local_count, [])) |> Enum.sum()
    check!(sum == n, "#{sum} workers running, not #{n}")
    say("  workers run per node: #{counts(nodes)} (sum #{sum})")

    say(
      "  each runs exactly once: #{n} names -> #{n} distinct pids = the pids the supervisors run" <>
        if(waited > 5_000, do: " (after #{ms(waited)} ms: extra copies were stopped)", else: "")
    )
  end

  defp check!(true, _what), do: :ok
  defp check!(false, what), do: raise("demo check failed: #{what}")

  # wait/1 with a 30 s deadline
  defp wait_until(what, fun, deadline \\ nil) do
    deadline = deadline || System.monotonic_time(:millisecond) + 30_000

    cond do
      fun.() ->
        :ok

      System.monotonic_time(:millisecond) > deadline ->
        raise "demo: timed out after 30 s waiting for: #{what}"

      true ->
        Process.sleep(5)
        wait_until(what, fun, deadline)
    end
  end

  defp wait_count(node, n), do: :erpc.call(node, Demo.Remote, :wait_count, [n], 30_000)

  defp table(header, rows, nodes, seen) do
    line = fn cells ->
      String.trim_trailing("    " <> Enum.map_join(cells, "", &String.pad_trailing(&1, 18)))
    end

    IO.puts(line.(header))

    rows
    |> Enum.with_index()
    |> Enum.each(fn {name, i} ->
      IO.puts(line.([name | Enum.map(nodes, &owner_label(Enum.at(seen[&1], i)))]))
    end)
  end

  defp owner_label(nil), do: "-"
  defp owner_label(node), do: short(node)

  defp wait(fun) do
    if fun.(),
      do: :ok,
      else:
        (
          Process.sleep(5)
          wait(fun)
        )
  end

  defp ms(us), do: Float.round(us / 1000, 1)
end

Demo.run()
