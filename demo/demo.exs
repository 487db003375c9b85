# make demo: a local 3-node cluster, replicated through Drove.
# Started by the Makefile as: elixir --name demo@127.0.0.1 --cookie drove -S mix run demo/demo.exs
defmodule Demo do
  @moduledoc false

  def start_nodes(n) do
    args =
      Enum.flat_map(:code.get_path(), &[~c"-pa", &1]) ++
        [~c"-setcookie", Atom.to_charlist(Node.get_cookie())]

    for i <- 1..n do
      {:ok, _pid, node} =
        :peer.start(%{
          name: :"demo#{i}_#{System.unique_integer([:positive])}",
          host: ~c"127.0.0.1",
          longnames: true,
          args: args
        })

      {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:drove])
      node
    end
  end

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
    end
    """
  end

  def run do
    unless Node.alive?(), do: raise("run me through `make demo` (needs a distributed node)")
    say("starting 3 local nodes on 127.0.0.1 ...")
    nodes = [a, b, c] = start_nodes(3)
    Enum.each(nodes, &:erpc.call(&1, Code, :compile_string, [remote_src()]))
    say("nodes: #{inspect(nodes)}")

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
    [d] = start_nodes(1)
    :erpc.call(d, Code, :compile_string, [remote_src()])
    t1 = System.os_time(:microsecond)
    :ok = :erpc.call(d, Demo.Remote, :start, [:demo_map, [{:demo_map, a}, {:demo_map, b}]])
    t2 = :erpc.call(d, Demo.Remote, :wait_size, [:demo_map, count - 1 + 1000], 60_000)
    say("#{d} caught up #{count - 1 + 1000} keys in #{ms(t2 - t1)} ms (anti-entropy)")

    sizes = for n <- [a, b, d], do: {n, :erpc.call(n, Drove.CRDT, :info, [:demo_map]).size}
    say("sizes: #{inspect(sizes)}")
    say("done.")
  end

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
